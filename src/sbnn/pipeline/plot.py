"""``sbnn plot RUN_DIR [RUN_DIR ...]``: PNG figures of trained runs (matplotlib, Agg backend).

Per run: ``weights.png`` (latent-weight histogram of every binary layer, with the 0 threshold:
the split into 1-bits and 0-bits and its asymmetry) and ``curves.png`` (ones fraction and test
accuracy over epochs). Across runs: ``accuracy_vs_bits.png`` (test accuracy against bits per binary
weight, dense BNN = 1 bit, entropy bound and kernel-level storage).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["plot_weights", "plot_curves", "plot_accuracy_vs_bits", "plot_runs"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def plot_weights(run: str | Path, out: str | Path | None = None) -> Path | None:
    """Latent-weight histograms, one panel per binary layer; None for a model without any."""
    from sbnn.method.constraint import sb_layers
    from sbnn.method.primitives import to_bits
    from sbnn.pipeline.runs import load_model

    run = Path(run)
    model = load_model(run)
    layers = sb_layers(model)
    if not layers:
        return None
    plt = _plt()
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (name, m) in zip(axes.flat, layers, strict=False):
        w = m.weight.detach().float().flatten().cpu().numpy()
        b = to_bits(w)
        p = float(b.mean())
        ax.hist(w[~b], bins=60, color="tab:blue", alpha=0.8, label="bit 0 (alpha)")
        ax.hist(w[b], bins=60, color="tab:red", alpha=0.8, label="bit 1 (beta)")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{name}\nones {p:.3f}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"latent weights: {run.name}", fontsize=9)
    fig.tight_layout()
    out = Path(out) if out else run / "weights.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_curves(run: str | Path, out: str | Path | None = None) -> Path | None:
    """Ones fraction and test accuracy over epochs."""
    run = Path(run)
    rows = _metrics(run)
    if not rows:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3))
    ep = [r["epoch"] for r in rows]
    ones = [r.get("ones_fraction") for r in rows]
    if any(o is not None for o in ones):
        a1.plot(ep, ones, "o-")
    a1.set_xlabel("epoch")
    a1.set_ylabel("global ones fraction")
    acc_rows = [(r["epoch"], r["test_accuracy"]) for r in rows if "test_accuracy" in r]
    if acc_rows:
        a2.plot(*zip(*acc_rows, strict=True), "o-", label="test")
    train_rows = [(r["epoch"], r["train_accuracy"]) for r in rows if "train_accuracy" in r]
    if train_rows:  # a `sbnn convert` run has no training accuracy for its epoch 0
        a2.plot(*zip(*train_rows, strict=True), "s--", label="train")
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy")
    a2.legend(fontsize=8)
    fig.suptitle(run.name, fontsize=9)
    fig.tight_layout()
    out = Path(out) if out else run / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_accuracy_vs_bits(runs: list[str | Path], out: str | Path) -> Path | None:
    """Test accuracy against bits per binary weight, one point per run and storage scheme."""
    pts = []
    for run in runs:
        path = Path(run) / "report.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        b = r.get("bits") or {}
        if not b.get("binary_weights") or r.get("test_accuracy") is None:
            continue
        pts.append((Path(run).name, r["test_accuracy"], b["bits_per_binary_weight_entropy"],
                    b["bits_per_binary_weight_kernel"]))
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
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_runs(runs: list[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """Every figure for ``runs``; per-run figures go into each run folder, the cross-run one into
    ``out_dir`` (default: the first run's folder)."""
    written = []
    for run in runs:
        run = Path(run)
        if not run.is_dir():
            raise FileNotFoundError(f"'{run}' is not a run folder")
        for fn in (plot_curves, plot_weights):
            p = fn(run)
            if p is not None:
                written.append(p)
    out_dir = Path(out_dir) if out_dir else Path(runs[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    p = plot_accuracy_vs_bits(runs, out_dir / "accuracy_vs_bits.png")
    if p is not None:
        written.append(p)
    return written


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plot", help="PNG plots of one or more runs",
                              description="Latent-weight histograms, ones fraction and accuracy "
                                          "over epochs, accuracy against bits per weight.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="folder for the cross-run plot (default: the first run)")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    for path in plot_runs(args.runs, args.out):
        print(path)
    return 0
