"""The domain study's report: the exact t distribution against table values, paired statistics,
and README generation from a partial results.csv (pending cells marked, no verdict invented)."""

from __future__ import annotations

import math

import pytest

from sbnn.pipeline import study, study_secondary, sweep


@pytest.mark.parametrize("df,q975", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764),
                                     (7, 2.3646), (10, 2.2281), (30, 2.0423)])
def test_t_quantiles_match_the_table(df, q975):
    assert study.t_quantile(0.975, df) == pytest.approx(q975, abs=1e-4)
    assert study.t_quantile(0.025, df) == pytest.approx(-q975, abs=1e-4)


def test_t_cdf_closed_forms():
    for t in (-3.0, -0.4, 0.0, 0.7, 5.0):
        assert study.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi)  # Cauchy
        assert study.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)))
    # large df tends to the normal
    assert study.t_cdf(1.96, 2000) == pytest.approx(0.975, abs=2e-4)
    with pytest.raises(ValueError):
        study.t_cdf(1.0, 0)


def test_paired_statistics():
    st = study.paired([1.0, 2.0, 3.0, 4.0])
    assert st["mean"] == 2.5 and st["sd"] == pytest.approx(1.2910, abs=1e-4)
    half = 3.1824 * 1.2910 / 2
    assert st["lo"] == pytest.approx(2.5 - half, abs=1e-3)
    assert st["hi"] == pytest.approx(2.5 + half, abs=1e-3)
    # t = 2.5 / (1.291 / 2) = 3.873 on 3 df: p = 0.0305 (R: t.test(c(1,2,3,4)))
    assert st["p"] == pytest.approx(0.03047, abs=2e-4)
    assert study.paired([0.3])["p"] is None
    assert study.paired([])["mean"] is None


def _row(domain, ec, seed, acc):
    return {"domain": domain, "arm": "cf", "ec": ec, "seed": seed, "test_accuracy": acc,
            "best_test_accuracy": acc, "ones_fraction": ec, "steps": 938,
            "cpu_model": "test cpu", "threads": 2, "sparsity_mode": "exact", "collapsed": 0}


def test_report_from_a_partial_csv(tmp_path):
    rows = []
    for s, (a, o) in enumerate([(0.85, 0.80), (0.86, 0.80), (0.84, 0.81)]):
        rows += [_row("ab", 0.1, s, a), _row("01", 0.1, s, o)]
    rows.append(_row("pm1", 0.1, 0, 0.7))  # one seed only: pending
    for r in rows:
        sweep.append_row(tmp_path, r)
    text = study.write_report(tmp_path, figures=True)
    assert (tmp_path / "study_accuracy_vs_ones.png").is_file()
    assert "**Status: 7 of 64 runs" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| 0.1 | ab − 01 |"))
    assert "0,1,2" in line and "partial (3/4 seeds)" in line and "+4.67" in line
    assert "| 0.1 | ab − pm1 | 0 | pending |" in text
    assert "Not yet run" in text and "EC 0.25 ab − 01" in text
    assert "sbnn sweep --config docs/study_domains/config.yaml --domain ab --ec 0.1" in text
    assert study_secondary.report("primary", tmp_path) == tmp_path / "README.md"
    with pytest.raises(ValueError, match="no results.csv"):
        study_secondary.report("primary", tmp_path / "none")
    assert _script("study_report").main([str(tmp_path)]) == 0
    assert _script("study_report").main([str(tmp_path / "none")]) == 2


def test_report_embeds_the_hand_written_analysis(tmp_path):
    sweep.append_row(tmp_path, _row("ab", 0.25, 0, 0.8))
    assert "## Why" not in study.write_report(tmp_path, figures=False)
    (tmp_path / "analysis.md").write_text("## Why a cell collapsed\n\nmeasured: 3 points\n")
    text = study.write_report(tmp_path, figures=False)
    assert "## Why a cell collapsed\n\nmeasured: 3 points\n\n## Paired differences" in text


def test_report_without_pairs_gives_no_verdict(tmp_path):
    sweep.append_row(tmp_path, _row("ab", 0.25, 0, 0.8))
    text = study.write_report(tmp_path, figures=False)
    assert "**no verdict**" in text


# --------------------------------------------------------------------------------------------
# accuracy against latency and file bytes (scripts/study_latency.py)
# --------------------------------------------------------------------------------------------

def _script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_update_rows_merges_cells_and_keeps_every_row(tmp_path):
    from sbnn.pipeline.sweep import append_row, read_rows, update_rows

    append_row(tmp_path, {"domain": "ab", "arm": "cf", "ec": 0.1, "seed": 0,
                          "test_accuracy": 0.8, "model_bytes": 10})
    append_row(tmp_path, {"domain": "01", "arm": "cf", "ec": 0.1, "seed": 0,
                          "test_accuracy": 0.7})
    rows = update_rows(tmp_path / "results.csv", [
        {"domain": "ab", "arm": "cf", "ec": 0.1, "seed": 0, "latency_b1_ms": 0.5,
         "latency_isa": "avx2"},
        {"domain": "onnxruntime", "arm": "int8", "ec": None, "seed": 0, "latency_b1_ms": 0.9}])
    back = read_rows(tmp_path / "results.csv")
    assert back == rows and len(back) == 3
    ab = back[0]
    assert ab["test_accuracy"] == 0.8 and ab["model_bytes"] == 10  # untouched cells kept
    assert ab["latency_b1_ms"] == 0.5 and ab["latency_isa"] == "avx2"
    assert back[1]["domain"] == "01" and back[1]["latency_b1_ms"] is None
    assert back[2]["domain"] == "onnxruntime" and back[2]["ec"] is None
    # the same update again replaces, never duplicates
    update_rows(tmp_path / "results.csv", [{"domain": "ab", "arm": "cf", "ec": 0.1, "seed": 0,
                                            "latency_b1_ms": 0.4}])
    back = read_rows(tmp_path / "results.csv")
    assert len(back) == 3 and back[0]["latency_b1_ms"] == 0.4


def test_best_of_interleaves_and_keeps_the_best_median():
    from sbnn.pipeline.study_latency import best_of

    calls = []
    res = best_of({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                  rounds=3, repeat=4, warmup=2)
    assert set(res) == {"a", "b"}
    assert all(wall >= 0 and cpu >= 0 for wall, cpu in res.values())
    # warm-up of each, then rounds that alternate the candidates
    assert calls[:4] == ["a", "a", "b", "b"]
    assert calls[4:] == (["a"] * 4 + ["b"] * 4) * 3
    with pytest.raises(ValueError):
        best_of({"a": lambda: None}, rounds=0)


def test_study_latency_fills_the_columns_and_adds_onnxruntime_rows(tmp_path, capsys):
    """A toy study (two arms and the fp twin), timed: every run gets its latency and file bytes,
    every other cell and row is kept, and onnxruntime fp32 / int8 on the trained twin get rows
    with their accuracy; the report then draws both figures."""
    from sbnn.cli import main as cli
    from sbnn.pipeline.data import write_synthetic_idx
    from sbnn.pipeline.study import write_report
    latency_main = _script("study_latency").main
    from sbnn.pipeline.sweep import read_rows

    root = write_synthetic_idx(tmp_path / "data", n_train=128, n_test=64)
    out = tmp_path / "study"
    args = ["sweep", "--ec", "0.1", "--domain", "ab,01", "--seeds", "0", "--no-latency",
            "--set", f"data.root={root}", "--set", "data.batch_size=64",
            "--set", "data.eval_batch_size=64", "--set", "model.kwargs={width: 8}",
            "--set", "epochs=1", "--set", "progress=false", "--set", "device=cpu",
            "--out", str(out)]
    assert cli(args) == 0
    before = read_rows(out / "results.csv")
    assert [r["domain"] for r in before] == ["fp", "ab", "01"]
    assert all(r["latency_b1_ms"] is None for r in before)
    ort = True
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        ort = False
    assert latency_main([str(out), "--best-of", "1", "--repeat", "2"]
                        + ([] if ort else ["--no-ort"])) == 0
    after = read_rows(out / "results.csv")
    assert [r["domain"] for r in after[:3]] == ["fp", "ab", "01"]
    for old, new in zip(before[1:], after[1:3], strict=True):
        assert new["latency_b1_ms"] > 0 and new["latency_best_of"] == 1
        assert new["model_bytes"] == (out / "runs" / f"{old['domain']}_cf_ec0.1_s0"
                                      / "model.sbnn").stat().st_size
        assert new["latency_isa"] and new["latency_cpu"] and new["latency_b1_cpu_ms"] >= 0
        assert set(new["latency_kernels"].split("/")) <= {"sparse", "dense", "tiny"}
        for k in ("test_accuracy", "ones_fraction", "alpha_beta_per_layer", "run_dir"):
            assert new[k] == old[k]
    assert after[0]["latency_b1_ms"] is None  # the fp reference is the twin, not a run timed
    if ort:
        extra = {r["arm"]: r for r in after[3:]}
        assert set(extra) == {"fp32", "int8"} and len(after) == 5
        for r in extra.values():
            assert r["domain"] == "onnxruntime" and r["latency_b1_ms"] > 0
            assert 0.0 <= r["test_accuracy"] <= 1.0 and "trained" in r["twin"]
        assert extra["int8"]["model_bytes"] < extra["fp32"]["model_bytes"]
    text = write_report(out)
    assert "## Accuracy against latency and file bytes" in text
    assert (out / "study_accuracy_vs_latency.png").is_file()
    assert (out / "study_accuracy_vs_bytes.png").is_file()
    assert latency_main([str(tmp_path / "nowhere")]) == 2
    assert "study_latency: error" in capsys.readouterr().err


def test_sweep_tables_and_plots_take_the_onnxruntime_rows(tmp_path):
    """A sweep that writes its results.md / plots after study_latency added its rows (no EC)."""
    rows = [{"domain": "ab", "arm": "cf", "ec": 0.1, "seed": 0, "test_accuracy": 0.85,
             "ones_fraction": 0.1, "bits_per_binary_weight": 0.5, "latency_b1_ms": 0.14,
             "model_bytes": 47000},
            {"domain": "onnxruntime", "arm": "fp32", "ec": None, "seed": 0,
             "test_accuracy": 0.90, "latency_b1_ms": 0.17, "model_bytes": 1005413}]
    sweep.write_results(rows, tmp_path)
    assert "onnxruntime" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "accuracy_vs_latency.png").is_file()
