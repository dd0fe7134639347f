"""Issue 22 item 1: the in-tree build backend (build_backend/sbnn_build.py) resolves the runtime
to ./runtime for a clone's `pip install .`, keeps the pinned requirement for wheels meant for
an index, and builds nothing inside the source tree."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _backend():
    spec = importlib.util.spec_from_file_location("sbnn_build", REPO / "build_backend" /
                                                  "sbnn_build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runtime_requirement_follows_the_folder_and_the_environment(tmp_path):
    b = _backend()
    req = b.runtime_requirement(REPO, {})
    assert req == f"sbnn-runtime @ {(REPO / 'runtime').resolve().as_uri()}"
    assert b.runtime_requirement(REPO, {"SBNN_RUNTIME_FROM_INDEX": "1"}) is None
    assert b.runtime_requirement(REPO, {"SBNN_RUNTIME_FROM_INDEX": "0"}) == req
    assert b.runtime_requirement(tmp_path, {}) is None  # an unpacked sdist: no runtime/ there


def test_the_pinned_requirement_is_where_the_backend_rewrites_it():
    text = (REPO / "pyproject.toml").read_text()
    b = _backend()
    assert text.count(b.PINNED) == 1
    runtime = (REPO / "runtime" / "pyproject.toml").read_text()
    assert 'version = "{}"'.format(b.PINNED.strip('"').split("==")[1]) in runtime


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts}


def test_metadata_names_the_clone_runtime_and_the_tree_stays_clean(tmp_path, monkeypatch):
    b = _backend()
    monkeypatch.delenv("SBNN_RUNTIME_FROM_INDEX", raising=False)
    before = _tree(REPO / "src") | {p.name for p in REPO.iterdir()}
    cwd = os.getcwd()
    name = b.prepare_metadata_for_build_wheel(str(tmp_path))
    assert os.getcwd() == cwd
    meta = (tmp_path / name / "METADATA").read_text()
    assert "Requires-Dist: sbnn-runtime @ file://" in meta
    assert (_tree(REPO / "src") | {p.name for p in REPO.iterdir()}) == before
    monkeypatch.setenv("SBNN_RUNTIME_FROM_INDEX", "1")
    (tmp_path / "pinned").mkdir()
    name = b.prepare_metadata_for_build_wheel(str(tmp_path / "pinned"))
    meta = (tmp_path / "pinned" / name / "METADATA").read_text()
    assert "Requires-Dist: sbnn-runtime==0.1.0" in meta
