"""Issue 13 item 16: what the plots show (curves with loss/penalty/lr and the target EC, integer
epoch ticks, axis labels, a per-layer bar chart, sweep plots with EC labels and seed spread, all
fractions in %)."""

from __future__ import annotations

import json

import pytest

from sbnn.pipeline import plot as splot


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import sbnn.pipeline.train as strain
    from sbnn.pipeline.config import load_config
    from sbnn.pipeline.data import write_synthetic_idx

    tmp = tmp_path_factory.mktemp("plots")
    root = write_synthetic_idx(tmp / "d", n_train=256, n_test=128)
    cfg = load_config(None, [f"data.root={root}", "model.kwargs={width: 8}", "epochs=3",
                             "progress=false", "device=cpu", "data.batch_size=64",
                             "optim.lr=0.01", "sparsity.ec=0.1"])
    strain.train(cfg, out=tmp / "run")
    return tmp / "run"


def _labels(ax):
    return [h.get_label() for h in ax.get_legend_handles_labels()[0]]


def _tick_text(ax, axis="y"):
    ax.figure.canvas.draw()
    ticks = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    return [t.get_text() for t in ticks if t.get_text()]


def test_curves_show_loss_penalty_lr_target_ec_in_percent(run):
    fig = splot._curves_figure(run)
    axes = fig.axes
    labels = sum((_labels(a) for a in axes), [])
    assert "train loss" in labels and "test loss" in labels and "sparsity penalty" in labels
    assert any(lbl.startswith("target EC 10%") for lbl in labels)
    assert any("learning rate" in lbl for lbl in labels)
    ones_ax = next(a for a in axes if a.get_ylabel() == "ones fraction")
    target = [ln for ln in ones_ax.get_lines() if ln.get_label().startswith("target EC")][0]
    assert target.get_ydata()[0] == pytest.approx(10.0)
    for ax in axes:
        assert ax.get_xlabel() == "epoch"
        fig.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks), ticks
    acc_ax = next(a for a in axes if a.get_ylabel() == "accuracy")
    assert all(t.endswith("%") for t in _tick_text(acc_ax))
    assert max(max(ln.get_ydata()) for ln in acc_ax.get_lines()) > 1.0  # in %, not fractions


def test_weights_have_axis_labels(run):
    fig = splot._weights_figure(run)
    ax = fig.axes[0]
    assert "latent weight" in ax.get_xlabel() and "weights" in ax.get_ylabel()
    assert "%" in ax.get_title()


def test_layer_bar_chart_and_plot_runs_writes_it(run):
    fig = splot._layers_figure(run)
    ax = fig.axes[0]
    rep = json.loads((run / "report.json").read_text())
    bars = ax.patches
    assert len(bars) == 2 * len(rep["layers"])
    assert [b.get_height() for b in bars[:len(rep["layers"])]] == pytest.approx(
        [100 * r["ones_fraction"] for r in rep["layers"]])
    assert _labels(ax) == ["ones fraction", "all-zero kernels"]
    assert all(t.endswith("%") for t in _tick_text(ax))
    written = {p.name for p in splot.plot_runs([run])}
    assert {"curves.png", "weights.png", "layers.png", "accuracy_vs_bits.png"} <= written


def test_accuracy_vs_bits_in_percent(run):
    fig = splot._accuracy_bits_figure([run])
    ax = fig.axes[0]
    rep = json.loads((run / "report.json").read_text())
    y = ax.collections[0].get_offsets()[0][1]
    assert y == pytest.approx(100 * rep["test_accuracy"])


def test_sweep_plot_labels_ec_and_shows_seed_spread():
    from sbnn.pipeline.sweep import sweep_figure

    rows = []
    for ec, accs in ((0.05, (0.80, 0.84)), (0.5, (0.90, 0.92))):
        for seed, acc in enumerate(accs):
            rows.append({"domain": "ab", "ec": ec, "seed": seed, "test_accuracy": acc,
                         "bits_per_binary_weight": 0.3 + ec + 0.01 * seed})
    rows.append({"domain": "fp", "ec": None, "seed": 0, "test_accuracy": 0.93})
    fig = sweep_figure(rows, "bits_per_binary_weight", "bits")
    ax = fig.axes[0]
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["EC 5%", "EC 50%"]
    # error bars: the y spread of the EC 0.05 seeds (80 and 84 %) is their std, 2.83 points
    bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    segs = [s for c in bars for s in c.get_segments()]
    ylens = sorted(abs(s[1][1] - s[0][1]) for s in segs if abs(s[1][0] - s[0][0]) < 1e-12)
    assert ylens == pytest.approx(sorted([2 * 2.8284271, 2 * 1.4142136]), rel=1e-5)
    assert all(t.endswith("%") for t in _tick_text(ax))
    line = [ln for ln in ax.get_lines() if ln.get_label() == "full precision"][0]
    assert line.get_ydata()[0] == pytest.approx(93.0)


def test_plot_formats_and_the_colour_blind_safe_palette(run, tmp_path):
    """Issue 22 item 6: --format png/svg/pdf, and every colour from the Okabe-Ito palette."""
    from matplotlib.colors import to_hex

    from sbnn import cli

    assert cli.main(["plot", str(run), "--format", "svg", "--format", "pdf",
                     "--out", str(tmp_path)]) == 0
    for stem in ("curves", "weights", "layers"):
        assert (run / f"{stem}.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
        assert (run / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "accuracy_vs_bits.svg").exists()
    with pytest.raises(ValueError, match="formats"):
        splot.plot_runs([run], formats=("jpg",))
    okabe = {c.lower() for c in splot.PALETTE.values()}
    fig = splot._curves_figure(run)
    used = {to_hex(line.get_color()) for ax in fig.axes for line in ax.get_lines()}
    grey = {"#808080", "#000000"}
    assert used - grey and used <= okabe | grey, used
    fig = splot._layers_figure(run)
    assert {to_hex(b.get_facecolor()) for b in fig.axes[0].patches} <= okabe
