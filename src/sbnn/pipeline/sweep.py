"""``sbnn sweep``: one training per (domain, start arm, EC, seed), then tables and plots.

The domains ``ab`` (learned {alpha, beta}), ``pm1`` and ``01`` are one parametrisation
``tau * s + phi`` with different ties (see :mod:`sbnn.method.layers`), so the tie is the only
difference between them. Each can start from two arms: ``cf`` (tau/phi fitted in closed form to
the initial split, ``sparsity.levels=fit``) and ``authors`` (tau = 1, phi = 0,
``sparsity.levels=unit``); both use the base config's latent-weight init (the main job: the
closed-form split at the target).

Each run lives in ``SWEEP_DIR/runs/<domain>_<arm>_ec<EC>_s<seed>/`` and is a normal ``sbnn train``
run folder. A run with a ``report.json`` is finished and skipped; one with only a ``last.pt``
resumes from it; so killing the sweep loses at most the run in progress. After training, each run is
exported to ``model.sbnn`` and timed on the engine (batch 1, one thread). The sweep then writes
``results.csv`` (one row per run: achieved ones fraction, its H(p), alpha/beta per layer, ...),
``results.md`` and three PNG plots: test accuracy against the achieved ones fraction, against bits
per binary weight (as stored in the exported file) and against measured engine latency, one curve
per (domain, arm), with
the full-precision twin and the dense BNN (the {alpha, beta} run at EC 0.5) as horizontal lines.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from dataclasses import replace
from pathlib import Path

from sbnn.pipeline.config import Config

__all__ = ["ARMS", "GAMMAS_CIFAR10", "GAMMAS_CIFAR100", "gamma_for", "run_sweep"]

# The authors' (EC, gamma) pairs (Schiavone et al., arXiv:2306.13515, their public code).
GAMMAS_CIFAR10 = {0.50: 0.0, 0.25: 0.02, 0.10: 0.04, 0.05: 0.07, 0.04: 0.07, 0.03: 0.08,
                  0.02: 0.08, 0.01: 0.10}
GAMMAS_CIFAR100 = {0.50: 0.0, 0.05: 0.05, 0.04: 0.05, 0.03: 0.05, 0.02: 0.06, 0.01: 0.07}

# sweep domain names -> model.domain; "ab" is the paper's learned {alpha, beta} domain
DOMAIN_ALIASES = {"ab": "learned", "learned": "learned", "closed_form": "closed_form",
                  "pm1": "pm1", "01": "01"}

# start arms -> sparsity.levels
ARMS = {"cf": "fit", "authors": "unit"}

COLUMNS = ["domain", "arm", "ec", "gamma", "seed", "test_accuracy", "best_test_accuracy",
           "ones_fraction", "ones_over_target", "entropy_ones", "alpha_over_beta",
           "alpha_beta_per_layer", "bits_per_binary_weight", "entropy_bits_per_weight",
           "binary_weights", "model_bytes", "latency_b1_ms", "train_wall_time_s", "run_dir"]


def gamma_for(ec: float, dataset: str = "fashion_mnist") -> float:
    """The authors' gamma for ``ec`` (CIFAR-100 table for cifar100, else CIFAR-10's); an EC
    outside the table takes the gamma of the nearest listed EC."""
    table = GAMMAS_CIFAR100 if dataset == "cifar100" else GAMMAS_CIFAR10
    if ec >= 0.5:
        return 0.0
    nearest = min(table, key=lambda e: (abs(e - ec), e))
    return table[nearest]


def _run_name(domain: str, arm: str | None, ec: float | None, seed: int) -> str:
    return f"fp_s{seed}" if domain == "fp" else f"{domain}_{arm}_ec{ec:g}_s{seed}"


def _entropy(p: float | None) -> float | None:
    if p is None:
        return None
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def _level_columns(report: dict) -> dict:
    """alpha/beta per binary layer (from the run's report) and their mean."""
    ratios, pairs = [], []
    for layer in report.get("layers", []):
        a, b = layer.get("alpha"), layer.get("beta")
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            pairs.append(f"{a:.4g}/{b:.4g}")
            if b != 0:
                ratios.append(a / b)
    return {"alpha_over_beta": statistics.mean(ratios) if ratios else None,
            "alpha_beta_per_layer": " ".join(pairs) if pairs else None}


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _train_one(cfg: Config, run_dir: Path) -> dict:
    """Train (or resume, or skip) one run; returns its report."""
    from sbnn.pipeline.train import Trainer

    report_path = run_dir / "report.json"
    if report_path.is_file():
        return json.loads(report_path.read_text())
    resume = run_dir if (run_dir / "last.pt").is_file() else None
    Trainer(cfg, out=run_dir, resume=resume).fit()
    return json.loads(report_path.read_text())


def _deploy_metrics(run_dir: Path, input_shape, latency: bool) -> dict:
    """Export the run to ``model.sbnn``; bits in the file, its size and engine latency."""
    import numpy as np

    from sbnn import engine
    from sbnn.deploy.export import export
    from sbnn.pipeline.runs import load_model
    from sbnn_runtime import fileformat
    from sbnn_runtime.summary import summarize

    path = run_dir / "model.sbnn"
    ckpt = run_dir / "last.pt"
    if path.is_file() and (not ckpt.is_file() or path.stat().st_mtime >= ckpt.stat().st_mtime):
        graph = fileformat.load(path)  # exported earlier (e.g. on the machine that trained it)
    else:
        graph = export(load_model(run_dir), path, input_shape, check=False)
    t = summarize(graph)["totals"]
    n = t["binary_params"]
    out = {"model_bytes": path.stat().st_size, "binary_weights": n}
    if n:
        out["bits_per_binary_weight"] = t["bits_per_binary_weight"]
        out["entropy_bits_per_weight"] = t["entropy_bits_per_weight"]
    if latency:
        eng = engine.load(path, num_threads=1)
        out["latency_b1_ms"] = 1e3 * float(np.median(
            [eng.bench(batch=1, warmup=3, repeat=15)["median_s"] for _ in range(3)]))
    return out


def run_sweep(cfg: Config, out: str | os.PathLike, ecs: list[float], domains: list[str],
              seeds: list[int], gammas: list[float] | None = None, fp_reference: bool = True,
              deploy: bool = True, latency: bool = True, arms: list[str] | None = None,
              train: bool = True) -> list[dict]:
    """Train every (domain, arm, EC, seed) combination of ``cfg`` and write the sweep's
    results. ``arms`` (default ``["cf"]``): keys of :data:`ARMS`. ``train=False`` tabulates the
    finished runs of the plan only (several sweeps sharing one folder, or a cut-short sitting)."""
    arms = arms or ["cf"]
    for a in arms:
        if a not in ARMS:
            raise ValueError(f"unknown sweep arm {a!r}; valid: {', '.join(ARMS)}")
    from sbnn import models
    from sbnn.pipeline.data import DATASET_SHAPES

    for d in domains:
        if d not in DOMAIN_ALIASES:
            raise ValueError(f"unknown sweep domain {d!r}; valid: {', '.join(DOMAIN_ALIASES)}")
    for ec in ecs:
        if not 0.0 < ec <= 0.5:
            raise ValueError(f"EC values must be in (0, 0.5], got {ec}")
    if gammas is not None and len(gammas) not in (1, len(ecs)):
        raise ValueError(f"--gamma needs one value or one per EC ({len(ecs)}), got {len(gammas)}")
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)

    plan: list[tuple[str, str | None, float | None, int, Config]] = []
    fp_name = f"{cfg.model.name}_fp"
    if fp_reference and fp_name in models.list_models():
        for seed in seeds:
            fp_cfg = replace(cfg, model=replace(cfg.model, name=fp_name), seed=seed)
            plan.append(("fp", None, None, seed, fp_cfg))
    # seeds innermost-but-one: a sweep cut short still has every cell at its first seeds
    for seed in seeds:
        for i, ec in enumerate(ecs):
            gamma = gamma_for(ec, cfg.data.name) if gammas is None else \
                gammas[0 if len(gammas) == 1 else i]
            for d in domains:
                for arm in arms:
                    run_cfg = replace(
                        cfg, seed=seed, model=replace(cfg.model, domain=DOMAIN_ALIASES[d]),
                        sparsity=replace(cfg.sparsity, ec=ec, gamma=gamma, levels=ARMS[arm]))
                    plan.append((d, arm, ec, seed, run_cfg))

    shape = DATASET_SHAPES.get(cfg.data.name)
    rows = []
    for k, (d, arm, ec, seed, run_cfg) in enumerate(plan, 1):
        run_dir = out / "runs" / _run_name(d, arm, ec, seed)
        if not train and not (run_dir / "report.json").is_file():
            if _rank() == 0:
                print(f"[sweep {k}/{len(plan)}] {run_dir.name}: not finished, left out", flush=True)
            continue
        if _rank() == 0:
            print(f"[sweep {k}/{len(plan)}] {run_dir.name}", flush=True)
        report = _train_one(run_cfg, run_dir)
        if _rank() != 0:
            continue
        p = report.get("ones_fraction")
        row = {"domain": d, "arm": arm, "ec": ec,
               "gamma": None if ec is None else run_cfg.sparsity.gamma,
               "seed": seed, "test_accuracy": report.get("test_accuracy"),
               "best_test_accuracy": report.get("best_test_accuracy"),
               "ones_fraction": p, "entropy_ones": _entropy(p),
               "ones_over_target": None if (p is None or ec is None) else p / ec,
               "train_wall_time_s": report.get("train_wall_time_s"),
               "run_dir": str(run_dir), **_level_columns(report)}
        if deploy and d != "fp" and shape is not None:
            row.update(_deploy_metrics(run_dir, shape, latency))
        rows.append(row)
    if _rank() == 0:
        write_results(rows, out)
    return rows


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _mean_std(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return ""
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}"


def write_results(rows: list[dict], out: str | os.PathLike) -> None:
    """``results.csv`` (one row per run), ``results.md`` (per run and mean over seeds), plots."""
    out = Path(out)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in COLUMNS})

    lines = ["# Sweep results", "", "## Per run", "",
             "| " + " | ".join(COLUMNS[:-1]) + " |", "|" + "---|" * (len(COLUMNS) - 1)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS[:-1]) + " |" for r in rows]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["domain"], r.get("arm"), r["ec"]), []).append(r)
    lines += ["", "## Mean ± std over seeds", "",
              "| domain | arm | EC | seeds | test accuracy | achieved ones | ones / target | "
              "H(p) | alpha / beta | bits / binary weight | latency b1 (ms) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (d, arm, ec), rs in groups.items():
        lines.append(
            f"| {d} | {_fmt(arm)} | {_fmt(ec)} | {len(rs)} "
            f"| {_mean_std([r.get('test_accuracy') for r in rs])} "
            f"| {_mean_std([r.get('ones_fraction') for r in rs])} "
            f"| {_mean_std([r.get('ones_over_target') for r in rs])} "
            f"| {_mean_std([r.get('entropy_ones') for r in rs])} "
            f"| {_mean_std([r.get('alpha_over_beta') for r in rs])} "
            f"| {_mean_std([r.get('bits_per_binary_weight') for r in rs])} "
            f"| {_mean_std([r.get('latency_b1_ms') for r in rs])} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot_results(rows, out)


def _mean_sd(rs: list[dict], key: str, scale: float = 1.0) -> tuple[float | None, float]:
    vals = [scale * r[key] for r in rs if r.get(key) is not None]
    if not vals:
        return None, 0.0
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def sweep_figure(rows: list[dict], key: str, label: str):
    """One sweep plot: test accuracy (%) against ``key``, one curve per domain, a point per EC
    (labelled with it) at the mean over seeds, the seeds' standard deviation as error bars."""
    from matplotlib.ticker import FuncFormatter

    from sbnn.pipeline.plot import pyplot

    plt = pyplot()  # Agg, with the colour-blind-safe palette of sbnn plot

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        name = r["domain"] if r["domain"] == "fp" or not r.get("arm") else \
            f"{r['domain']} ({r['arm']})"
        groups.setdefault((name, r["ec"]), []).append(r)
    fp = [100 * r["test_accuracy"] for r in rows
          if r["domain"] == "fp" and r.get("test_accuracy") is not None]
    bnn = [100 * r["test_accuracy"] for r in rows if r["domain"] in ("ab", "learned")
           and r["ec"] == 0.5 and r.get("test_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for d in sorted({dd for dd, _ in groups if dd != "fp"}):
        pts = []
        for (dd, ec), rs in groups.items():
            if dd != d:
                continue
            xscale = 100.0 if key == "ones_fraction" else 1.0  # fractions are shown in %
            (x, xs), (y, ys) = _mean_sd(rs, key, xscale), _mean_sd(rs, "test_accuracy", 100.0)
            if x is not None and y is not None:
                pts.append((x, y, xs, ys, ec))
        pts.sort()
        if not pts:
            continue
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[3] for p in pts],
                    xerr=[p[2] for p in pts], fmt="o-", capsize=3, label=d)
        for x, y, _, _, ec in pts:
            ax.annotate(f"EC {100 * ec:g}%", (x, y), xytext=(4, 4), textcoords="offset points",
                        fontsize=6)
    if fp:
        ax.axhline(statistics.mean(fp), color="k", ls="--", label="full precision")
    if bnn:
        ax.axhline(statistics.mean(bnn), color="gray", ls=":", label="dense BNN (EC 50%)")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_results(rows: list[dict], out: Path) -> None:
    from sbnn.pipeline.plot import pyplot

    plt = pyplot()
    for key, label, fname in (("ones_fraction", "achieved ones fraction (%)",
                               "accuracy_vs_ones.png"),
                              ("bits_per_binary_weight", "bits per binary weight (file)",
                               "accuracy_vs_bits.png"),
                              ("latency_b1_ms", "engine latency, batch 1, 1 thread (ms)",
                               "accuracy_vs_latency.png")):
        fig = sweep_figure(rows, key, label)
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
