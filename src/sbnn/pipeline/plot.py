"""``sbnn plot RUN_DIR [RUN_DIR ...]``: figures of trained runs (matplotlib, Agg backend), as
PNG, SVG or PDF (``formats``; the names below with their extension).

Per run: ``weights.png`` (latent-weight histogram of every binary layer, with the 0 threshold:
the split into 1-bits and 0-bits and its asymmetry), ``curves.png`` (train/test loss and the
sparsity penalty, accuracy, ones fraction with the target EC line, learning rate, over integer
epochs) and ``layers.png`` (per binary layer: ones fraction and all-zero kernels). Across runs:
``accuracy_vs_bits.png`` (test accuracy against bits per binary weight, dense BNN = 1 bit,
entropy bound and kernel-level storage). Fractions are plotted in %. Colours come from the
Okabe-Ito palette (:data:`PALETTE`), which stays distinct for the common colour-vision
deficiencies; series also differ by marker or line style.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["PALETTE", "FORMATS", "pyplot", "plot_weights", "plot_curves", "plot_layers",
           "plot_accuracy_vs_bits", "plot_runs"]

# Okabe & Ito, "Color Universal Design" (2008): eight colours told apart with protanopia,
# deuteranopia and tritanopia; the colour cycle of every figure, in this order
PALETTE = {"blue": "#0072B2", "vermillion": "#D55E00", "green": "#009E73", "orange": "#E69F00",
           "sky": "#56B4E9", "purple": "#CC79A7", "yellow": "#F0E442", "black": "#000000"}
FORMATS = ("png", "svg", "pdf")


def pyplot():
    """matplotlib.pyplot on the Agg backend, with :data:`PALETTE` as the colour cycle."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from cycler import cycler

    plt.rcParams["axes.prop_cycle"] = cycler(color=list(PALETTE.values()))
    return plt


_plt = pyplot


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _percent_axis(ax, axis: str = "y") -> None:
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}%")
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(fmt)


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def _run_config(run: Path) -> dict:
    import yaml

    path = run / "config.yaml"
    if not path.exists():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}


def _weights_figure(run: Path):
    from sbnn.method.constraint import sb_layers
    from sbnn.method.primitives import to_bits
    from sbnn.pipeline.runs import load_model

    model = load_model(run)
    layers = sb_layers(model)
    if not layers:
        return None
    plt = _plt()
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, m) in zip(axes.flat, layers, strict=False):
        w = m.weight.detach().float().flatten().cpu().numpy()
        b = to_bits(w)
        p = float(b.mean())
        ax.hist(w[~b], bins=60, color=PALETTE["blue"], alpha=0.8, label="bit 0 (alpha)")
        ax.hist(w[b], bins=60, color=PALETTE["vermillion"], alpha=0.8, label="bit 1 (beta)")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{name}\nones {100 * p:.2f}%", fontsize=8)
        ax.set_xlabel("latent weight (bit 1 where >= 0)", fontsize=7)
        ax.set_ylabel("weights (log scale)", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"latent weights: {run.name}", fontsize=9)
    fig.tight_layout()
    return fig


def _save(fig, out: Path) -> Path:
    from sbnn.pipeline.runs import save_figure

    plt = _plt()
    try:
        save_figure(fig, out, dpi=110)
    finally:
        plt.close(fig)
    return out


def plot_weights(run: str | Path, out: str | Path | None = None) -> Path | None:
    """Latent-weight histograms, one panel per binary layer; None for a model without any."""
    run = Path(run)
    fig = _weights_figure(run)
    if fig is None:
        return None
    return _save(fig, Path(out) if out else run / "weights.png")


def _series(rows: list[dict], key: str, scale: float = 1.0):
    pts = [(r["epoch"], scale * r[key]) for r in rows if r.get(key) is not None]
    return tuple(zip(*pts, strict=True)) if pts else None


def _curves_figure(run: Path):
    rows = _metrics(run)
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    (a_loss, a_acc), (a_ones, a_lr) = axes
    for key, style, label in (("train_loss", "o-", "train"), ("test_loss", "s--", "test")):
        s = _series(rows, key)
        if s:
            a_loss.plot(*s, style, label=f"{label} loss")
    pen = _series(rows, "penalty")
    if pen and any(v for v in pen[1]):
        a_loss.plot(*pen, "^:", color=PALETTE["purple"], label="sparsity penalty")
    a_loss.set_ylabel("loss (cross-entropy)")
    for key, style, label in (("test_accuracy", "o-", "test"), ("train_accuracy", "s--", "train")):
        s = _series(rows, key, 100.0)  # a convert run has no training accuracy for its epoch 0
        if s:
            a_acc.plot(*s, style, label=label)
    a_acc.set_ylabel("accuracy")
    _percent_axis(a_acc)
    ones = _series(rows, "ones_fraction", 100.0)
    if ones:
        a_ones.plot(*ones, "o-", label="global ones fraction")
    ec = ((_run_config(run).get("sparsity") or {}).get("ec"))
    if isinstance(ec, (int, float)) and ones:
        a_ones.axhline(100 * ec, color=PALETTE["vermillion"], ls="--", lw=1,
                       label=f"target EC {100 * ec:g}%")
    a_ones.set_ylabel("ones fraction")
    _percent_axis(a_ones)
    lr = _series(rows, "lr")
    if lr:
        a_lr.plot(*lr, "o-", color=PALETTE["green"], label="learning rate (end of epoch)")
    a_lr.set_ylabel("learning rate")
    for ax in axes.flat:
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(run.name, fontsize=9)
    fig.tight_layout()
    return fig


def plot_curves(run: str | Path, out: str | Path | None = None) -> Path | None:
    """Loss and penalty, accuracy (%), ones fraction (%) with the target EC, and the learning
    rate over (integer) epochs."""
    run = Path(run)
    fig = _curves_figure(run)
    if fig is None:
        return None
    return _save(fig, Path(out) if out else run / "curves.png")


def _layer_rows(run: Path) -> list[dict]:
    rep = run / "report.json"
    if rep.exists():
        layers = json.loads(rep.read_text()).get("layers")
        if layers:
            return layers
    from sbnn.pipeline.runs import load_model
    from sbnn.verbs.stats import layer_stats

    return layer_stats(load_model(run))


def _layers_figure(run: Path):
    import numpy as np

    rows = _layer_rows(run)
    if not rows:
        return None
    plt = _plt()
    names = [r["name"] for r in rows]
    ones = [100 * r["ones_fraction"] for r in rows]
    zk = [100 * (r.get("zero_kernels") or 0.0) for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.8 * len(rows) + 2), 3.4))
    ax.bar(x - 0.2, ones, 0.4, label="ones fraction")
    ax.bar(x + 0.2, zk, 0.4, label="all-zero kernels")
    for xi, v in zip(x, ones, strict=True):
        ax.annotate(f"{v:.1f}", (xi - 0.2, v), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, names, rotation=45 if len(rows) > 6 else 0, ha="right" if len(rows) > 6
                  else "center", fontsize=7)
    ax.set_xlabel("binary layer")
    ax.set_ylabel("share of the layer")
    _percent_axis(ax)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"per-layer sparsity: {run.name}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_layers(run: str | Path, out: str | Path | None = None) -> Path | None:
    """Bar chart per binary layer: ones fraction and all-zero kernels (%)."""
    run = Path(run)
    fig = _layers_figure(run)
    if fig is None:
        return None
    return _save(fig, Path(out) if out else run / "layers.png")


def _accuracy_bits_figure(runs: list[str | Path]):
    pts = []
    for run in runs:
        path = Path(run) / "report.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        b = r.get("bits") or {}
        if not b.get("binary_weights") or r.get("test_accuracy") is None:
            continue
        pts.append((Path(run).name, 100 * r["test_accuracy"],
                    b["bits_per_binary_weight_entropy"], b["bits_per_binary_weight_kernel"]))
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter([p[2] for p in pts], [p[1] for p in pts], marker="o", label="entropy bound")
    ax.scatter([p[3] for p in pts], [p[1] for p in pts], marker="x", label="kernel-level")
    for name, acc, ent, _ in pts:
        ax.annotate(name, (ent, acc), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axvline(1.0, color="gray", ls=":", lw=1, label="dense BNN (1 bit)")
    ax.set_xlabel("bits per binary weight")
    ax.set_ylabel("test accuracy")
    _percent_axis(ax)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_bits(runs: list[str | Path], out: str | Path) -> Path | None:
    """Test accuracy (%) against bits per binary weight, one point per run and storage scheme."""
    fig = _accuracy_bits_figure(runs)
    if fig is None:
        return None
    return _save(fig, Path(out))


def plot_runs(runs: list[str | Path], out_dir: str | Path | None = None,
              formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Every figure for ``runs`` in each of ``formats`` (of :data:`FORMATS`); per-run figures go
    into each run folder, the cross-run one into ``out_dir`` (default: the first run's
    folder). Returns the files written."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"plot formats must be among {', '.join(FORMATS)}, got {list(formats)}")
    written = []

    from sbnn.pipeline.runs import save_figure

    def save(fig, stem: Path) -> None:
        if fig is None:
            return
        for fmt in formats:
            save_figure(fig, stem.with_suffix("." + fmt), dpi=110)
            written.append(stem.with_suffix("." + fmt))
        pyplot().close(fig)

    for run in runs:
        run = Path(run)
        if not run.is_dir():
            raise FileNotFoundError(f"'{run}' is not a run folder")
        save(_curves_figure(run), run / "curves")
        save(_weights_figure(run), run / "weights")
        save(_layers_figure(run), run / "layers")
    out_dir = Path(out_dir) if out_dir else Path(runs[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    save(_accuracy_bits_figure(runs), out_dir / "accuracy_vs_bits")
    return written
