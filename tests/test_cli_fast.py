"""Issue 22: a fast command line (no torch for --help), options with help texts and the same
common options everywhere, quiet logs off a terminal, --log-json, and sbnn bench's table/CSV."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import yaml

from sbnn import cli
from sbnn.pipeline.data import write_synthetic_idx

COMMANDS = ("train", "evaluate", "plot", "convert", "sweep", "export", "bench", "summary")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_help_loads_neither_torch_nor_the_native_core():
    """Every `sbnn [COMMAND] --help` in a fresh interpreter: afterwards no torch module and no
    native core are loaded (and each help really printed)."""
    code = f"""
import contextlib, io, sys
from sbnn.cli import main
for cmd in [None] + {list(COMMANDS)!r}:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            main(([cmd] if cmd else []) + ["--help"])
        except SystemExit:
            pass
    assert "usage: sbnn" in buf.getvalue(), cmd
    bad = [m for m in sys.modules if m.split(".")[0] == "torch"
           or m in ("sbnn_runtime.native", "sbnn_runtime._core")]
    print(cmd, " ".join(bad))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, check=True)
    rows = [ln.split(" ", 1) for ln in r.stdout.splitlines()]
    assert [c for c, _ in rows] == ["None", *COMMANDS]
    assert all(not loaded.strip() for _, loaded in rows), r.stdout


def test_every_option_and_argument_has_a_help_text():
    missing = []
    for name, p in _subparsers().items():
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            text = a.help or ""
            if not text.strip() or text.startswith("default:") or text == argparse.SUPPRESS:
                missing.append(f"sbnn {name} {'/'.join(a.option_strings) or a.dest}")
    assert not missing, "options without a help text:\n" + "\n".join(missing)


def test_common_options_are_spelled_and_explained_the_same_way():
    seen: dict[str, dict[str, str]] = {}
    for name, p in _subparsers().items():
        for a in p._actions:
            for flag in ("--device", "--seed"):
                if flag in a.option_strings:
                    seen.setdefault(flag, {})[name] = a.help
            if "--threads" in a.option_strings and a.nargs is None:
                seen.setdefault("--threads", {})[name] = a.help
            if "--out" in a.option_strings:
                assert "-o" in a.option_strings, name
                seen.setdefault("--out", {})[name] = ""
    assert set(seen["--device"]) >= {"train", "evaluate", "convert", "sweep"}
    assert set(seen["--threads"]) >= {"train", "evaluate", "convert", "sweep"}
    assert set(seen["--seed"]) >= {"train", "convert", "bench"}
    assert set(seen["--out"]) >= {"train", "convert", "sweep", "export", "plot"}
    for flag in ("--device", "--threads"):
        assert len(set(seen[flag].values())) == 1, seen[flag]
    p = cli.build_parser()
    assert p.parse_args(["sweep", "--seeds", "0,1", "-o", "s"]).seeds == "0,1"


def test_common_flags_are_config_keys():
    from sbnn.cli.common import as_overrides

    args = cli.build_parser().parse_args(
        ["train", "--set", "seed=1", "--seed", "3", "--device", "cpu", "--threads", "2",
         "--log-every", "5", "--no-progress"])
    ov = as_overrides(args)
    assert ov == ["seed=1", "device=cpu", "threads=2", "seed=3", "log_every=5",
                  "progress=false"]
    from sbnn.pipeline.config import load_config

    cfg = load_config(None, ov)
    assert (cfg.seed, cfg.device, cfg.threads, cfg.log_every, cfg.progress) == (
        3, "cpu", 2, 5, False)


def test_cli_choices_match_the_verbs():
    from sbnn.cli import convert as cconv
    from sbnn.verbs import convert as vconv

    assert cconv.GRANULARITIES == vconv.GRANULARITIES
    assert cconv.ALLOCATIONS == vconv.ALLOCATIONS


def test_a_logged_run_is_quiet_and_its_events_parse(tmp_path):
    """Off a terminal: no carriage return, one line per epoch plus one every --log-every
    steps; --log-json writes start, step, epoch, warning and end events."""
    root = write_synthetic_idx(tmp_path / "data", n_train=256, n_test=128)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"root": str(root), "batch_size": 32},
                                   "model": {"kwargs": {"width": 8}}, "epochs": 2}))
    events = tmp_path / "events.jsonl"
    code = ("import sys; from sbnn.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "train", "--config", str(cfg),
                        "--device", "cpu", "--threads", "1", "--log-every", "4", "--log-json",
                        str(events), "--out", str(tmp_path / "run")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    log = r.stdout
    assert "\r" not in log
    assert len(log.splitlines()) <= 200
    lines = log.splitlines()
    assert sum(ln.startswith("epoch ") for ln in lines) == 2
    assert sum(ln.startswith("step ") for ln in lines) == 16 // 4  # 8 steps per epoch, 2 epochs
    rows = [json.loads(ln) for ln in events.read_text().splitlines()]
    kinds = [e["event"] for e in rows]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("epoch") == 2 and kinds.count("step") == 4
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert kinds.count("warning") == len(report["warnings"])
    step = next(e for e in rows if e["event"] == "step")
    assert step["step"] == 4 and isinstance(step["loss"], float)


def test_runlog_draws_a_bar_only_on_a_terminal(capsys):
    from sbnn.pipeline.logs import RunLog

    class Tty:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    tty = Tty()
    bar = RunLog(10, stream=tty)
    for _ in range(10):
        bar.update()
    bar.close()
    assert "\r" in tty.text
    plain = RunLog(10, every=5)
    for _ in range(10):
        plain.set_postfix({"loss": "0.5"})
        plain.update()
    plain.close()
    out = capsys.readouterr().out
    assert "\r" not in out and out.count("step ") == 2 and "loss 0.5" in out


@pytest.fixture(scope="module")
def bench_result(tmp_path_factory):
    import sbnn
    from sbnn.deploy.bench import bench
    from sbnn.deploy.export import export
    from sbnn_runtime.native import core

    if core is None:
        pytest.skip("native core not built")
    model = sbnn.models.create("resnet18_irnet", num_classes=10).eval()
    path = tmp_path_factory.mktemp("bench") / "r.sbnn"
    export(model, path, (3, 32, 32), check=False)
    return bench(path, [1], [1], 0, 1, float_twin=False, layers=True, onnxruntime=False)


def test_bench_names_layers_by_module_path_within_100_columns(bench_result):
    from sbnn.deploy.bench import format_table

    text = format_table(bench_result)
    assert max(len(ln) for ln in text.splitlines()) <= 100, text
    for path in ("layers.0.conv1", "layers.2.conv2", "layers.2.shortcut.0"):
        assert f" {path} " in text, path
    run = bench_result["runs"][0]
    ops = run["layer_names"]
    paths = run["layer_paths"]
    i = paths.index("layers.2.shortcut.0")
    assert ops[i] == "conv2d" and ops[i + 1].startswith("sbconv2d+add")


def test_plan_paths_of_old_unnamed_nodes_and_unknown_labels():
    from sbnn.deploy.bench import plan_paths
    from sbnn_runtime.ops import Graph, Node

    nodes = [Node("input", [], {"shape": [1, 4, 4]}, name="input"),
             Node("relu", [0], {}, {}, ""), Node("flatten", [1], {}, {}, "head.flat")]
    g = Graph(nodes, 2)
    assert plan_paths(g, ["relu", "flatten", "mystery"]) == ["#1", "head.flat", "mystery"]


def test_bench_csv_has_model_and_layer_rows(bench_result, tmp_path):
    import csv
    import io

    from sbnn.deploy.bench import to_csv

    rows = list(csv.DictReader(io.StringIO(to_csv(bench_result))))
    scopes = {r["scope"] for r in rows}
    assert scopes == {"model", "layer"}
    model = [r for r in rows if r["scope"] == "model"]
    assert [r["name"] for r in model] == ["sparse", "dense"]  # no hand-built torch row (issue 17)
    assert model[0]["ratio"] == "" and float(model[1]["ratio"]) > 0
    layer = {r["name"]: r for r in rows if r["scope"] == "layer"}
    assert layer["layers.0.conv1"]["op"].startswith("sbconv2d")
    assert float(layer["layers.0.conv1"]["ms"]) > 0


def test_bench_thread_scaling_rows_and_table():
    from sbnn.deploy.bench import format_table, thread_scaling

    def run(b, t, wall, cpu, ort=None):
        med = {"sparse": wall, "dense": 2 * wall}
        if ort:
            med["ort_int8"] = ort
        return {"batch": b, "threads": t, "median_s": med,
                "cpu_s": {k: cpu for k in med}, "layers": {},
                "speedup": {k: v / wall for k, v in med.items() if k != "sparse"},
                "cpu_speedup": {k: 1.0 for k in med if k != "sparse"}}

    runs = [run(16, 1, 0.010, 0.010, 0.05), run(1, 2, 0.001, 0.001, 0.004),
            run(16, 2, 0.006, 0.011, 0.03)]
    sc = thread_scaling(runs)
    assert len(sc) == 1  # batch 1 has no 1-thread run to compare with
    assert sc[0]["batch"] == 16 and sc[0]["threads"] == 2
    assert abs(sc[0]["wall_x"] - 10 / 6) < 1e-9 and abs(sc[0]["cpu_ratio"] - 1.1) < 1e-9
    assert abs(sc[0]["idle_bound_x"] - 2 / 1.1) < 1e-9 and abs(sc[0]["ort_int8_x"] - 5) < 1e-9
    res = {"model": "m.sbnn", "input_shape": [3, 8, 8], "runs": runs, "scaling": sc,
           "layer_names": []}
    text = format_table(res, layers=False)
    assert "batch 16, 2 threads: 1.67x, cpu 1.10, bound 1.82x, ort_int8 5.00x slower" in text
    assert max(len(ln) for ln in text.splitlines()) <= 100
