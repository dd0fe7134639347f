"""The domain study's secondary reports: the penalty grid (achieved ones beside every accuracy,
paired differences, the curve from 100 % ones) and the trained Sub-bit comparison at equal bits
per weight (paired by seed), from small CSVs in the sweep's own layout."""

from __future__ import annotations

import math

import pytest

from sbnn.pipeline import study_secondary as sec
from sbnn.pipeline import sweep


def _row(domain, ec, seed, acc, ones, **kw):
    return {"domain": domain, "arm": "cf", "ec": ec, "seed": seed, "test_accuracy": acc,
            "best_test_accuracy": acc, "ones_fraction": ones, "ones_over_target": ones / ec,
            "steps": 938, "cpu_model": "test cpu", "threads": 2, "collapsed": 0, **kw}


def test_entropy_matches_the_subbit_budgets():
    assert sec.entropy(0.5) == pytest.approx(1.0)
    assert sec.entropy(0.0) == 0.0 and sec.entropy(1.0) == 0.0
    for k, ec in sec.SUBBIT_EC.items():  # the EC whose H(EC) is Sub-bit's k/9 bits
        assert sec.entropy(ec) == pytest.approx(k / 9, abs=2e-3)


def test_penalty_report_reports_achieved_ones_and_pairs(tmp_path):
    for s, (a, o, c) in enumerate([(0.85, 0.80, 0.78), (0.87, 0.81, 0.79)]):
        sweep.append_row(tmp_path, _row("ab", 0.05, s, a, 0.046))
        sweep.append_row(tmp_path, _row("01", 0.05, s, o, 0.035))
        sweep.append_row(tmp_path, _row("pm1c", 0.05, s, c, 0.050, latency_b1_ms=0.1))
    text = sec.write_penalty_report(tmp_path, figures=True)
    assert (tmp_path / "accuracy_vs_achieved_ones.png").is_file()
    assert "**Status: 6 of 24 runs" in text
    cell = next(ln for ln in text.splitlines() if ln.startswith("| 0.05 | 01 |"))
    assert "| 0,1 | 80.50 |" in cell and "| 0.0350 | 0.70 |" in cell
    pair = next(ln for ln in text.splitlines() if ln.startswith("| 0.05 | ab − 01 |"))
    assert "| 0,1 | +5.50 |" in pair  # (5 + 6) / 2 points
    assert "| 0.25 | ab | pending |" in text
    assert "Not run yet: no curve" in text


def test_penalty_report_embeds_the_curve(tmp_path):
    sweep.append_row(tmp_path, _row("ab", 0.25, 0, 0.85, 0.24))
    cdir = tmp_path / "ones_from_full"
    cdir.mkdir()
    (cdir / "ones_curve.csv").write_text("epoch,ones_fraction,test_accuracy\n"
                                         "1,0.8,0.70\n2,0.4,0.75\n")
    text = sec.write_penalty_report(tmp_path, figures=False)
    assert "| 2 | 0.4000 | 75.00 |" in text
    # halving per epoch from 0.4 to 0.05: three more epochs
    assert "about 3 more epochs" in text


def test_subbit_report_pairs_by_seed(tmp_path):
    (tmp_path / "k5").mkdir()
    (tmp_path / "sbnn").mkdir()
    for s, (sub, sb) in enumerate([(0.80, 0.83), (0.81, 0.83), (0.79, 0.84)]):
        sweep.append_row(tmp_path / "k5", _row("pm1", 0.5, s, sub, 0.5, prune_patterns=5,
                                               bits_per_binary_weight=0.556))
        sweep.append_row(tmp_path / "sbnn", _row("ab", 0.1293, s, sb, 0.1293,
                                                 bits_per_binary_weight=0.6))
    sweep.append_row(tmp_path / "sbnn", _row("ab", 0.0924, 0, 0.82, 0.0924))
    text = sec.write_subbit_report(tmp_path, figures=True)
    assert (tmp_path / "subbit_vs_sbnn.png").is_file()
    assert "**Status: 7 of 18 runs" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| 0.556 | 5 |"))
    diffs = [3.0, 2.0, 5.0]
    st = sec.paired(diffs)
    assert f"| {st['mean']:+.2f} |" in line and f"{st['p']:.3f}" in line
    assert "0.556 / 0.600" in line
    assert "| 0.444 | 4 | pending |" in text
    assert math.isclose(st["mean"], 10 / 3)


def test_cli_kinds_and_missing_folder(tmp_path, capsys):
    (tmp_path / "sbnn").mkdir()
    sweep.append_row(tmp_path / "sbnn", _row("ab", 0.174, 0, 0.8, 0.174))
    from test_study import _script

    main = _script("study_report").main
    assert main(["--kind", "subbit", str(tmp_path)]) == 0
    assert (tmp_path / "README.md").is_file()
    assert main(["--kind", "penalty", str(tmp_path / "none")]) == 2
    assert "no results.csv" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown study part"):
        sec.report("nope", tmp_path)
