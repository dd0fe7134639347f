"""One measured curve from 100 % ones (``scripts/ones_from_full.py``).

The authors' CIFAR recipe starts every binary layer at 100 % ones (latent weights
``rand * 0.001``, tau = 1, phi = 0: ``sparsity.init=authors``, ``sparsity.levels=unit``) and lets
their penalty (``sparsity.mode=penalty`` with their gamma for the EC) bring the ones fraction
down. :func:`ones_curve` trains such a run (resuming it when its folder holds a ``last.pt``, so
the curve can be extended a few epochs per sitting), then writes the ones fraction and the test
accuracy per epoch as ``ones_curve.csv`` and ``ones_curve.png`` into the run folder, with the
epochs the target still needs at the last epoch's rate of fall (an extrapolation, labelled so).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace
from pathlib import Path

__all__ = ["curve_rows", "epochs_to_target", "write_curve", "ones_curve"]


def curve_rows(run_dir: str | Path) -> list[dict]:
    """``[{epoch, step, ones_fraction, test_accuracy}]`` from the run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"no metrics.jsonl in '{run_dir}'")
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        m = json.loads(line)
        if "epoch" not in m:
            continue
        rows.append({"epoch": int(m["epoch"]), "ones_fraction": m.get("ones_fraction"),
                     "test_accuracy": m.get("test_accuracy")})
    return rows


def epochs_to_target(rows: list[dict], ec: float) -> float | None:
    """Further epochs until the ones fraction reaches ``ec`` if it kept falling by the last
    epoch's factor (geometric extrapolation); 0 when reached; None when it does not fall."""
    ps = [r["ones_fraction"] for r in rows if r.get("ones_fraction") is not None]
    if not ps:
        return None
    if ps[-1] <= ec:
        return 0.0
    if len(ps) < 2 or not 0 < ps[-1] < ps[-2]:
        return None
    return math.log(ec / ps[-1]) / math.log(ps[-1] / ps[-2])


def write_curve(run_dir: str | Path, ec: float) -> dict:
    """``ones_curve.csv`` and ``ones_curve.png`` of a run folder; returns a summary."""
    from sbnn.pipeline.plot import pyplot
    from sbnn.pipeline.runs import save_figure, write_text

    run_dir = Path(run_dir)
    rows = curve_rows(run_dir)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["epoch", "ones_fraction", "test_accuracy"],
                       lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None else v for k, v in r.items()})
    write_text(run_dir / "ones_curve.csv", buf.getvalue())
    more = epochs_to_target(rows, ec)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ep = [r["epoch"] for r in rows]
    ax.plot(ep, [100 * (r["ones_fraction"] or 0) for r in rows], "o-", label="ones fraction")
    ax.axhline(100 * ec, color="gray", ls=":", label=f"target EC {100 * ec:g} %")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ones fraction (%)")
    ax2 = ax.twinx()
    ax2.plot(ep, [100 * (r["test_accuracy"] or 0) for r in rows], "s--", color="C1",
             label="test accuracy")
    ax2.set_ylabel("test accuracy (%)")
    note = "target reached" if more == 0 else (
        "not falling: no extrapolation" if more is None else
        f"at the last epoch's rate: ~{more:.0f} more epochs to the target (extrapolated)")
    ax.set_title(f"from 100 % ones, the authors' start and penalty; {note}", fontsize=8)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, run_dir / "ones_curve.png", dpi=120)
    plt.close(fig)
    last = rows[-1] if rows else {}
    return {"epochs": len(rows), "ones_fraction": last.get("ones_fraction"),
            "test_accuracy": last.get("test_accuracy"), "epochs_to_target": more, "note": note}


def ones_curve(cfg, out: str | Path, epochs: int, ec: float, domain: str = "learned",
               stop_after: int | None = None) -> dict:
    """Train (or resume) the run from 100 % ones in ``out`` for ``epochs`` epochs in all, then
    :func:`write_curve`. ``stop_after``: epochs to train in this call (a slice of a long run)."""
    from sbnn.pipeline.sweep import gamma_for
    from sbnn.pipeline.train import Trainer

    out = Path(out)
    cfg = replace(cfg, epochs=epochs, model=replace(cfg.model, domain=domain),
                  sparsity=replace(cfg.sparsity, init="authors", levels="unit", mode="penalty",
                                   ec=ec, gamma=gamma_for(ec, cfg.data.name)))
    done = len(curve_rows(out)) if (out / "metrics.jsonl").is_file() else 0
    if done < epochs:
        resume = out if (out / "last.pt").is_file() else None
        stop = None if stop_after is None else done + stop_after
        Trainer(cfg, out=out, resume=resume, stop_after=stop).fit()
    return write_curve(out, ec)
