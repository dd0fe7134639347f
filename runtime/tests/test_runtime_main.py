"""``python -m sbnn_runtime``: the summary command, its JSON, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import sbnn_runtime.fileformat as ff
from sbnn_runtime.__main__ import COMMANDS, main
from sbnn_runtime.summary import format_summary, summarize
from test_fileformat import small_graph


def test_summary_prints_the_one_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "m.sbnn"
    ff.save(small_graph(1), path)
    assert main(["summary", str(path), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert out == format_summary(summarize(path), title=str(path)) + "\n"
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(
        json.dumps(summarize(path)))
    assert "summary" in COMMANDS


def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.sbnn"
    bad.write_bytes(b"not a model")
    for arg in (bad, tmp_path / "missing.sbnn"):
        assert main(["summary", str(arg)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("python -m sbnn_runtime summary: error:")


def test_module_runs_as_a_program(tmp_path):
    path = tmp_path / "m.sbnn"
    ff.save(small_graph(2), path)
    r = subprocess.run([sys.executable, "-m", "sbnn_runtime", "summary", str(path)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "MACs per image" in r.stdout
