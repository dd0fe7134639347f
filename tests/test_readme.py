"""The README's Python code blocks run as written, so the docs cannot rot."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_blocks():
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    if "ones_fraction" in BLOCKS[index]:
        assert abs(float(out.strip().splitlines()[-1]) - 0.05) < 0.01
