"""docs/API.md is generated from the docstrings by scripts/gen_api_docs.py and kept current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _gen():
    spec = importlib.util.spec_from_file_location("gen_api_docs", REPO / "scripts" /
                                                  "gen_api_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_api_page_is_up_to_date():
    gen = _gen()
    text = gen.render()
    assert (REPO / "docs" / "API.md").read_text(encoding="utf-8") == text, \
        "docs/API.md is stale: run python scripts/gen_api_docs.py"


def test_api_page_lists_the_public_names():
    text = (REPO / "docs" / "API.md").read_text(encoding="utf-8")
    for name in ("## `sbnn.method.primitives`", "**`closed_form(", "## `sbnn_runtime.engine`",
                 "## `sbnn.pipeline.checks`", "**`run_warnings("):
        assert name in text, name
    assert "## `sbnn.cli" not in text  # the command line is documented by --help
    assert " at 0x" not in text  # no object addresses: the page is the same on every run
