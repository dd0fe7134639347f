"""``sbnn sweep``: one training per (domain, start arm, EC, seed), then tables and plots.

The domains ``ab`` (learned {alpha, beta}), ``pm1``, ``01`` and ``abr`` (alpha / (beta - alpha)
fixed at -EC) are one parametrisation
``tau * s + phi`` with different ties (see :mod:`sbnn.method.layers`), so the tie is the only
difference between them. Each can start from two arms: ``cf`` (tau/phi fitted in closed form to
the initial split, ``sparsity.levels=fit``) and ``authors`` (tau = 1, phi = 0,
``sparsity.levels=unit``); both use the base config's latent-weight init (the main job: the
closed-form split at the target).

Each run lives in ``SWEEP_DIR/runs/<domain>_<arm>_ec<EC>_s<seed>/`` and is a normal ``sbnn train``
run folder. After training, each run is exported to ``model.sbnn`` and timed on the engine (batch
1, one thread), and its row is appended to ``SWEEP_DIR/results.csv`` at once (atomically, under a
lock). A run whose (domain, arm, EC, seed) row is already in ``results.csv`` is skipped, so a sweep
resumes from a committed CSV on another machine; a run with a ``report.json`` is tabulated without
training; one with only a ``last.pt`` resumes from it; so killing the sweep loses at most the runs
in progress. ``jobs`` runs train at once (one process each, the threads split among them); ``shard
= (i, n)`` keeps plan entries ``i, i + n, i + 2n, ...`` (0-based), one deterministic slice for a
job array; :func:`collect` merges the slices' ``results.csv``. The sweep then writes ``results.md``
(from every row of ``results.csv``) and three PNG plots: test accuracy against the achieved ones
fraction, against bits per binary weight (as stored in the exported file) and against measured
engine latency, one curve per (domain, arm), with the full-precision twin and the dense BNN (the
{alpha, beta} run at EC 0.5) as horizontal lines.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from dataclasses import replace
from pathlib import Path

from sbnn.pipeline.config import Config
from sbnn.pipeline.runs import locked_file

__all__ = ["ARMS", "GAMMAS_CIFAR10", "GAMMAS_CIFAR100", "gamma_for", "run_sweep", "read_rows",
           "append_row", "update_rows", "collect", "parse_shard"]

# The authors' (EC, gamma) pairs (Schiavone et al., arXiv:2306.13515, their public code).
GAMMAS_CIFAR10 = {0.50: 0.0, 0.25: 0.02, 0.10: 0.04, 0.05: 0.07, 0.04: 0.07, 0.03: 0.08,
                  0.02: 0.08, 0.01: 0.10}
GAMMAS_CIFAR100 = {0.50: 0.0, 0.05: 0.05, 0.04: 0.05, 0.03: 0.05, 0.02: 0.06, 0.01: 0.07}

# sweep domain names -> model.domain; "ab" is the paper's learned {alpha, beta} domain
DOMAIN_ALIASES = {"ab": "learned", "learned": "learned", "closed_form": "closed_form",
                  "pm1": "pm1", "01": "01", "abr": "abr", "pm1c": "pm1c"}

# start arms -> sparsity.levels
ARMS = {"cf": "fit", "authors": "unit"}

COLUMNS = ["domain", "arm", "ec", "gamma", "seed", "test_accuracy", "best_test_accuracy",
           "ones_fraction", "ones_over_target", "entropy_ones", "alpha_over_beta",
           "alpha_beta_per_layer", "bits_per_binary_weight", "entropy_bits_per_weight",
           "binary_weights", "model_bytes", "latency_b1_ms", "train_wall_time_s", "steps",
           "sparsity_mode", "cpu_model", "threads", "collapsed", "run_dir"]
# the columns that name a run: a row with the same key in results.csv means "done, skip it"
KEY = ("domain", "arm", "ec", "seed")


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
        if isinstance(a, list) and isinstance(b, list) and a and len(a) == len(b):
            # per-channel levels (pm1c): the channels' mean ratio, levels as channel means
            per = [x / y for x, y in zip(a, b, strict=True) if y != 0]
            if per:
                ratios.append(statistics.mean(per))
            pairs.append(f"{statistics.mean(a):.4g}/{statistics.mean(b):.4g}")
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
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


def collapsed(row: dict) -> bool:
    """A run is flagged collapsed (kept, never dropped) when its final test accuracy is more than
    5 points under its best epoch's, or its ones fraction fell under half the target."""
    acc, best = row.get("test_accuracy"), row.get("best_test_accuracy")
    p, ec = row.get("ones_fraction"), row.get("ec")
    if acc is not None and best is not None and acc < best - 0.05:
        return True
    return p is not None and ec is not None and p < 0.5 * ec


def _run_row(spec: tuple) -> dict | None:
    """Train one plan entry and build its ``results.csv`` row (None on a non-zero rank); a
    top-level function so that ``--jobs`` can run it in a worker process."""
    d, arm, ec, seed, run_cfg, run_dir, shape, deploy, latency = spec
    report = _train_one(run_cfg, run_dir)
    if _rank() != 0:
        return None
    p = report.get("ones_fraction")
    row = {"domain": d, "arm": arm, "ec": ec,
           "gamma": None if ec is None else run_cfg.sparsity.gamma,
           "seed": seed, "test_accuracy": report.get("test_accuracy"),
           "best_test_accuracy": report.get("best_test_accuracy"),
           "ones_fraction": p, "entropy_ones": _entropy(p),
           "ones_over_target": None if (p is None or ec is None) else p / ec,
           "train_wall_time_s": report.get("train_wall_time_s"),
           "steps": report.get("steps"), "cpu_model": report.get("cpu_model"),
           "threads": report.get("threads"),
           "sparsity_mode": None if ec is None else run_cfg.sparsity.mode,
           "run_dir": str(run_dir), **_level_columns(report)}
    row["collapsed"] = int(collapsed(row)) if ec is not None else None
    if run_cfg.prune.patterns:  # Sub-bit runs: 2**k kernel patterns, k/9 index bits per weight
        row["prune_patterns"] = run_cfg.prune.patterns
        row["patterns_trained"] = int(run_cfg.prune.patterns_trained)
    if deploy and d != "fp" and shape is not None:
        row.update(_deploy_metrics(run_dir, shape, latency))
    return row


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# results.csv: one row per run, appended as runs finish
# --------------------------------------------------------------------------------------------

# text columns: never parsed as numbers (the domain "01" is not the number 1)
TEXT_COLUMNS = ("domain", "arm", "alpha_beta_per_layer", "sparsity_mode", "cpu_model", "run_dir",
                "latency_isa", "latency_cpu", "latency_kernels", "twin")


def _parse(col: str, v: str):
    if v == "":
        return None
    if col in TEXT_COLUMNS:
        return v
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _key(row: dict) -> tuple[str, ...]:
    def norm(c):
        v = row.get(c)
        if v is None or v == "":
            return ""
        if c == "ec":
            return f"{float(v):g}"
        if c == "seed":
            return str(int(v))
        return str(v)

    return tuple(norm(c) for c in KEY)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a sweep's ``results.csv`` (numbers parsed, empty cells None); [] when there is
    no such file. Columns this version does not know are kept."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _parse(k, v) for k, v in r.items() if k is not None}
                for r in csv.DictReader(f)]


def _csv_text(rows: list[dict]) -> str:
    extra = [c for r in rows for c in r if c not in COLUMNS]
    cols = COLUMNS + list(dict.fromkeys(extra))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: _fmt_csv(r.get(c)) for c in cols})
    return buf.getvalue()


def _fmt_csv(v) -> str:
    return "" if v is None else str(v)


def _merge(rows: list[dict], new: list[dict]) -> list[dict]:
    """``rows`` with each of ``new`` replacing the row of the same key, or appended."""
    out = list(rows)
    index = {_key(r): i for i, r in enumerate(out)}
    for r in new:
        k = _key(r)
        if k in index:
            out[index[k]] = r
        else:
            index[k] = len(out)
            out.append(r)
    return out


def append_row(out: str | os.PathLike, row: dict) -> None:
    """Add ``row`` to ``out/results.csv`` (replacing a row of the same run), atomically and under
    a lock, so that parallel workers and a kill at any moment leave a whole file."""
    from sbnn.pipeline.runs import write_text

    out = Path(out)
    path = out / "results.csv"
    with locked_file(out / ".results.csv.lock"):
        write_text(path, _csv_text(_merge(read_rows(path), [row])))


def update_rows(path: str | os.PathLike, updates: list[dict]) -> list[dict]:
    """Merge ``updates`` into the rows of the CSV at ``path`` (a sweep's ``results.csv``) under
    the same lock as :func:`append_row`: an update whose run (domain, arm, EC, seed) has a row
    sets the columns it names and keeps every other cell; one without a row is appended. Rows
    that no update names are kept as they are, so a sweep appending rows meanwhile loses
    nothing. Returns every row as written."""
    from sbnn.pipeline.runs import write_text

    path = Path(path)
    with locked_file(path.parent / f".{path.name}.lock"):
        rows = read_rows(path)
        index = {_key(r): i for i, r in enumerate(rows)}
        for u in updates:
            k = _key(u)
            if k in index:
                rows[index[k]] = {**rows[index[k]], **u}
            else:
                index[k] = len(rows)
                rows.append(dict(u))
        write_text(path, _csv_text(rows))
        return read_rows(path)


def collect(sources: list[str | os.PathLike], out: str | os.PathLike) -> list[dict]:
    """Merge the ``results.csv`` of every folder (or CSV file) in ``sources`` into
    ``out/results.csv`` (rows already there first; a later source's row replaces an earlier one
    of the same run), then write ``results.md`` and the plots. Returns every row."""
    from sbnn.pipeline.runs import write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.csv"
    with locked_file(out / ".results.csv.lock"):
        rows = read_rows(path)
        for src in sources:
            src = Path(src)
            csv_path = src if src.suffix == ".csv" else src / "results.csv"
            if not csv_path.is_file():
                raise ValueError(f"--collect: no results.csv in '{src}'")
            if csv_path.resolve() != path.resolve():
                rows = _merge(rows, read_rows(csv_path))
        write_text(path, _csv_text(rows))
    write_results(rows, out, csv_too=False)
    return rows


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> ``(i, n)``."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects i/n with integers 0 <= i < n, got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard expects i/n with integers 0 <= i < n, got {text!r}")
    return i, n


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
              train: bool = True, jobs: int = 1, shard: tuple[int, int] | None = None
              ) -> list[dict]:
    """Train every (domain, arm, EC, seed) combination of ``cfg`` and write the sweep's
    results. ``arms`` (default ``["cf"]``): keys of :data:`ARMS`. ``train=False`` tabulates the
    plan's rows already in ``results.csv`` and its finished runs only (several sweeps sharing one
    folder, or a cut-short sitting). ``jobs``: runs at once, each in its own process with
    ``threads // jobs`` threads (``threads``: ``cfg.threads`` or the CPU count). ``shard=(i, n)``:
    only plan entries ``i, i + n, ...``. Returns the plan's rows (in plan order)."""
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
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if jobs > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--jobs > 1 cannot run under torchrun (use one or the other)")
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
    if shard is not None:
        plan = plan[shard[0]::shard[1]]

    threads = cfg.threads or os.cpu_count() or 1
    per_job = max(1, threads // jobs)
    shape = DATASET_SHAPES.get(cfg.data.name)
    done = {_key(r): r for r in read_rows(out / "results.csv")}
    main = _rank() == 0
    rows: dict[int, dict] = {}
    todo = []
    for k, (d, arm, ec, seed, run_cfg) in enumerate(plan, 1):
        run_dir = out / "runs" / _run_name(d, arm, ec, seed)
        key = _key({"domain": d, "arm": arm, "ec": ec, "seed": seed})
        tag = f"[sweep {k}/{len(plan)}] {run_dir.name}"
        if key in done:
            if main:
                print(f"{tag}: in results.csv, skipped", flush=True)
            rows[k] = done[key]
            continue
        if not train and not (run_dir / "report.json").is_file():
            if main:
                print(f"{tag}: not finished, left out", flush=True)
            continue
        if jobs > 1:
            run_cfg = replace(run_cfg, threads=per_job, progress=False)
        todo.append((k, tag, (d, arm, ec, seed, run_cfg, run_dir, shape, deploy, latency)))

    def finished(k: int, row: dict | None) -> None:
        if row is not None and main:
            append_row(out, row)  # at once: a kill later loses nothing of this run
            rows[k] = row

    if jobs == 1 or len(todo) <= 1:
        for k, tag, spec in todo:
            if main:
                print(tag, flush=True)
            finished(k, _run_row(spec))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: a forked child would inherit the parent's OpenMP thread pool state
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_worker_init, initargs=(per_job,)) as pool:
            futs = {}
            for k, tag, spec in todo:
                print(f"{tag} (queued; {jobs} jobs x {per_job} threads)", flush=True)
                futs[pool.submit(_run_row, spec)] = (k, tag)
            for fut in as_completed(futs):
                k, tag = futs[fut]
                finished(k, fut.result())
                print(f"{tag}: done", flush=True)
    if main:
        write_results(read_rows(out / "results.csv"), out, csv_too=False)
    return [rows[k] for k in sorted(rows)]


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


def write_results(rows: list[dict], out: str | os.PathLike, csv_too: bool = True) -> None:
    """``results.csv`` (one row per run; unless ``csv_too=False``), ``results.md`` (per run and
    mean over seeds), plots."""
    from sbnn.pipeline.runs import write_text

    out = Path(out)
    if csv_too:
        write_text(out / "results.csv", _csv_text(rows))

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
    write_text(out / "results.md", "\n".join(lines) + "\n")
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
            if ec is not None:  # rows without an EC (onnxruntime baselines) are points only
                ax.annotate(f"EC {100 * ec:g}%", (x, y), xytext=(4, 4),
                            textcoords="offset points", fontsize=6)
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
        from sbnn.pipeline.runs import save_figure

        fig = sweep_figure(rows, key, label)
        save_figure(fig, out / fname, dpi=120)
        plt.close(fig)
