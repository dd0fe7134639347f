"""The domain study's report: the exact t distribution against table values, paired statistics,
and README generation from a partial results.csv (pending cells marked, no verdict invented)."""

from __future__ import annotations

import math

import pytest

from sbnn.pipeline import study, sweep


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
    assert study.main([str(tmp_path)]) == 0
    assert study.main([str(tmp_path / "none")]) == 2


def test_report_without_pairs_gives_no_verdict(tmp_path):
    sweep.append_row(tmp_path, _row("ab", 0.25, 0, 0.8))
    text = study.write_report(tmp_path, figures=False)
    assert "**no verdict**" in text
