"""The domain study's report (``docs/study_domains/``), regenerated from its ``results.csv``.

``python scripts/study_report.py [STUDY_DIR]`` reads ``STUDY_DIR/results.csv`` (the rows that
``sbnn sweep`` appends as runs finish) and writes ``STUDY_DIR/README.md`` and
``STUDY_DIR/study_accuracy_vs_ones.png``: per EC, the paired differences (same seed = same init
and data order) ``ab - 01``, ``ab - pm1`` and ``ab - abr`` in test accuracy, with their mean, 95 %
confidence interval and two-sided paired t-test p-value, and a verdict in words that says which
cells are still pending; and, once ``scripts/study_latency.py`` has filled the ``latency_b1_ms`` /
``model_bytes`` columns, ``study_accuracy_vs_latency.png`` and ``study_accuracy_vs_bytes.png``
with the onnxruntime float-twin points on the same axes. The t distribution is computed exactly
for integer degrees of freedom (:func:`t_cdf`; no scipy needed).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from sbnn.pipeline.runs import save_figure, write_text

__all__ = ["t_cdf", "t_quantile", "paired", "cell_stats", "comparison", "figure", "deploy_figure",
           "analysis_lines", "fmt_ci", "fmt_num", "fmt_p", "write_report"]

ARMS = ("ab", "abr", "01", "pm1")
ECS = (0.25, 0.1, 0.05, 0.01)
SEEDS = (0, 1, 2, 3)
COMPARISONS = (("ab", "01"), ("ab", "pm1"), ("ab", "abr"))
ALPHA = 0.05

SWEEP_CMD = ("bash docs/study_domains/run_study.sh   # = three calls of:\n"
             "sbnn sweep --config docs/study_domains/config.yaml --domain ab,01,pm1,abr --arm cf "
             "--no-fp --no-latency --out docs/study_domains --ec EC_LIST --seeds SEED_LIST")
REPRO_CMD = ("sbnn sweep --config docs/study_domains/config.yaml --domain ab --ec 0.1 --seeds 0 "
             "--no-fp --no-latency --out DIR")


# --------------------------------------------------------------------------------------------
# Student's t, exactly, for integer degrees of freedom
# --------------------------------------------------------------------------------------------

def _t_central(t: float, df: int) -> float:
    """``P(|T| < t)`` for ``T ~ t(df)``, ``t >= 0``: the closed-form finite series (Abramowitz
    and Stegun 26.7.3/26.7.4) in ``theta = atan(t / sqrt(df))``."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        s, term = 0.0, 1.0
        if df > 1:
            s = term = 1.0
            for j in range(1, (df - 3) // 2 + 1):
                term *= c2 * (2 * j) / (2 * j + 1)
                s += term
            s *= math.sin(theta) * math.cos(theta)
        return 2.0 / math.pi * (theta + s)
    s = term = 1.0
    for j in range(1, (df - 2) // 2 + 1):
        term *= c2 * (2 * j - 1) / (2 * j)
        s += term
    return math.sin(theta) * s


def t_cdf(t: float, df: int) -> float:
    """``P(T <= t)`` for Student's t with integer ``df >= 1``."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df}")
    a = _t_central(abs(t), int(df))
    return 0.5 + 0.5 * a if t >= 0 else 0.5 - 0.5 * a


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of t(df) (``0 < q < 1``), by bisection on :func:`t_cdf`."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_quantile(1 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
    return (lo + hi) / 2


def paired(diffs: list[float]) -> dict:
    """Mean, 95 % CI and two-sided paired t-test p of ``diffs`` (one per seed); ``n < 2``:
    mean only. A zero spread with a non-zero mean gives p = 0 (and a zero-width CI)."""
    n = len(diffs)
    out = {"n": n, "mean": statistics.mean(diffs) if diffs else None, "lo": None, "hi": None,
           "p": None, "sd": None}
    if n < 2:
        return out
    sd = statistics.stdev(diffs)
    se = sd / math.sqrt(n)
    half = t_quantile(1 - ALPHA / 2, n - 1) * se
    out.update(sd=sd, lo=out["mean"] - half, hi=out["mean"] + half)
    if se == 0:
        out["p"] = 1.0 if out["mean"] == 0 else 0.0
    else:
        out["p"] = 2 * (1 - t_cdf(abs(out["mean"]) / se, n - 1))
    return out


# --------------------------------------------------------------------------------------------
# the study's tables
# --------------------------------------------------------------------------------------------

def _acc(rows: list[dict], domain: str, ec: float) -> dict[int, dict]:
    """seed -> row of (domain, ec)."""
    return {int(r["seed"]): r for r in rows if r.get("domain") == domain
            and r.get("ec") is not None and abs(float(r["ec"]) - ec) < 1e-12
            and r.get("test_accuracy") is not None}


def cell_stats(rows: list[dict], domain: str, ec: float) -> dict:
    """Mean test accuracy of a (domain, EC) cell over its seeds with a 95 % t interval."""
    runs = _acc(rows, domain, ec)
    accs = [100 * float(r["test_accuracy"]) for r in runs.values()]
    st = paired(accs)
    ones = [float(r["ones_fraction"]) for r in runs.values() if r.get("ones_fraction") is not None]
    st["ones"] = statistics.mean(ones) if ones else None
    # r = alpha / (beta - alpha) from the per-layer alpha / beta pairs: r = (a/b) / (1 - a/b)
    rs = []
    for r in runs.values():
        for pair in str(r.get("alpha_beta_per_layer") or "").split():
            a, _, b = pair.partition("/")
            try:
                a, b = float(a), float(b)
            except ValueError:
                continue
            if b != a:
                rs.append(a / (b - a))
    st["r"] = statistics.mean(rs) if rs else None
    st["collapsed"] = sum(1 for r in runs.values() if r.get("collapsed") in (1, "1", True))
    st["seeds"] = sorted(runs)
    return st


def comparison(rows: list[dict], a: str, b: str, ec: float) -> dict:
    """Paired differences ``a - b`` (accuracy points) over the seeds both arms have."""
    ra, rb = _acc(rows, a, ec), _acc(rows, b, ec)
    seeds = sorted(set(ra) & set(rb))
    st = paired([100 * (float(ra[s]["test_accuracy"]) - float(rb[s]["test_accuracy"]))
                 for s in seeds])
    st["seeds"] = seeds
    return st


def fmt_num(v, nd=2, sign=False) -> str:
    if v is None:
        return "–"
    return f"{v:+.{nd}f}" if sign else f"{v:.{nd}f}"


def fmt_ci(st: dict, sign: bool = False) -> str:
    """``[lo, hi]`` of a :func:`paired` result, ``–`` when it has none."""
    if st["lo"] is None:
        return "–"
    return f"[{fmt_num(st['lo'], sign=sign)}, {fmt_num(st['hi'], sign=sign)}]"


def fmt_p(p) -> str:
    if p is None:
        return "–"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _status(n: int) -> str:
    if n < 2:
        return "pending"
    if n < len(SEEDS):
        return f"partial ({n}/{len(SEEDS)} seeds)"
    return "complete"


def _verdict(rows: list[dict]) -> list[str]:
    lines = []
    m = len(COMPARISONS) * len(ECS)
    done = [(ec, a, b, comparison(rows, a, b, ec)) for ec in ECS for a, b in COMPARISONS]
    ran = [x for x in done if x[3]["n"] >= 2]
    pending = [x for x in done if x[3]["n"] < 2]
    single = [f"EC {ec:g} {a} − {b} = {fmt_num(st['mean'], sign=True)} points (seed "
              f"{st['seeds'][0]})" for ec, a, b, st in pending if st["n"] == 1]
    first = ("One seed only so far, no test and no evidence either way: " + "; ".join(single)
             + ".") if single else None
    if not ran:
        return ["No comparison has two paired seeds yet: **no verdict**. Every cell below is "
                "pending; rerun this script as rows arrive."] + ([f"- {first}"] if first else [])
    for ec, a, b, st in ran:
        what = f"EC {ec:g}, {a} − {b} ({_status(st['n'])})"
        ci = f"{fmt_num(st['mean'], sign=True)} points, 95 % CI [{fmt_num(st['lo'], sign=True)}, " \
             f"{fmt_num(st['hi'], sign=True)}], p = {fmt_p(st['p'])}"
        if st["p"] is not None and st["p"] < ALPHA / m:
            word = "better" if st["mean"] > 0 else "worse"
            lines.append(f"- {what}: **{a} is {word}**, {ci} (significant after Bonferroni over "
                         f"the {m} comparisons, p < {ALPHA / m:.4f}).")
        elif st["p"] is not None and st["p"] < ALPHA:
            word = "ahead" if st["mean"] > 0 else "behind"
            lines.append(f"- {what}: {a} {word}, {ci}: p < 0.05 uncorrected only, not "
                         f"significant over the {m} comparisons.")
        elif st["lo"] is not None and st["lo"] <= 0 <= st["hi"]:
            big = max(abs(st["lo"]), abs(st["hi"]))
            lines.append(f"- {what}: no significant difference, {ci}; the interval includes "
                         f"zero and effects as large as {big:.1f} points, so it shows neither a "
                         "difference nor that the arms are equal.")
        else:
            lines.append(f"- {what}: no significant difference, {ci}.")
    if first:
        lines.append(f"- {first}")
    if pending:
        lines.append("- Not yet run (fewer than two paired seeds): " + ", ".join(
            f"EC {ec:g} {a} − {b}" for ec, a, b, _ in pending) + ".")
    return lines


def figure(rows: list[dict], path: Path, arms: tuple = ARMS, ecs: tuple = ECS) -> None:
    """Accuracy against the achieved ones fraction: one point per run (collapsed runs as x), and
    per (domain, EC) the mean with its 95 % t interval (``arms`` x ``ecs``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    mid = (len(arms) - 1) / 2
    offsets = {d: (i - mid) * 0.012 for i, d in enumerate(arms)}  # spread arms on a log x axis
    for i, d in enumerate(arms):
        color = f"C{i}"
        pts = [r for r in rows if r.get("domain") == d and r.get("ones_fraction") is not None
               and r.get("test_accuracy") is not None]
        if not pts:
            continue
        for r in pts:
            x = 100 * float(r["ones_fraction"]) * 10 ** offsets[d]
            bad = r.get("collapsed") in (1, "1", True)
            ax.plot(x, 100 * float(r["test_accuracy"]), "x" if bad else ".", color=color,
                    alpha=0.5, ms=6)
        xs, ys, es = [], [], []
        for ec in ecs:
            st = cell_stats(rows, d, ec)
            if st["mean"] is None:
                continue
            xs.append(100 * st["ones"] * 10 ** offsets[d])
            ys.append(st["mean"])
            es.append(0.0 if st["hi"] is None else st["hi"] - st["mean"])
        order = sorted(range(len(xs)), key=xs.__getitem__)
        ax.errorbar([xs[k] for k in order], [ys[k] for k in order], yerr=[es[k] for k in order],
                    fmt="o-", color=color, capsize=3, label=d, ms=5)
    ax.set_xscale("log")
    xs = [100 * float(r["ones_fraction"]) for r in rows if r.get("domain") in arms
          and r.get("ones_fraction") is not None] + [100 * ec for ec in ecs]
    ax.set_xticks([100 * ec for ec in ecs])
    ax.set_xticklabels([f"{100 * ec:g}" for ec in ecs])
    ax.set_xlim(min(xs) * 0.8, max(xs) * 1.25)
    ax.set_xlabel("achieved ones fraction (%; arms offset slightly for legibility)")
    ax.set_ylabel("test accuracy (%), last epoch")
    ax.set_title("runs (dots; x = flagged collapsed) and means with 95 % t intervals", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


ORT_ARMS = ("fp32", "int8")  # onnxruntime rows (scripts/study_latency.py): the float twin


def deploy_figure(rows: list[dict], key: str, label: str, path: Path) -> bool:
    """Accuracy against ``key`` (``latency_b1_ms`` or ``model_bytes``): one point per run, the
    (arm, EC) means with their 95 % t interval, and the onnxruntime float twin's fp32 / int8
    points on the same axes (a vertical line where the twin's accuracy was not measured).
    Returns False (no file) when no run has ``key``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in rows if r.get("domain") in ARMS and r.get(key) is not None
            and r.get("test_accuracy") is not None]
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, d in enumerate(ARMS):
        pts = [r for r in runs if r["domain"] == d]
        if not pts:
            continue
        color = f"C{i}"
        for r in pts:
            bad = r.get("collapsed") in (1, "1", True)
            ax.plot(float(r[key]), 100 * float(r["test_accuracy"]), "x" if bad else ".",
                    color=color, alpha=0.5, ms=6)
        xs, ys, es, ecs = [], [], [], []
        for ec in ECS:
            cell = [r for r in pts if abs(float(r["ec"]) - ec) < 1e-12]
            if not cell:
                continue
            st = paired([100 * float(r["test_accuracy"]) for r in cell])
            xs.append(statistics.mean(float(r[key]) for r in cell))
            ys.append(st["mean"])
            es.append(0.0 if st["hi"] is None else st["hi"] - st["mean"])
            ecs.append(ec)
        ax.errorbar(xs, ys, yerr=es, fmt="o", color=color, capsize=3, label=d, ms=5)
        for x, y, ec in zip(xs, ys, ecs, strict=True):
            ax.annotate(f"{100 * ec:g}%", (x, y), xytext=(3, 3), textcoords="offset points",
                        fontsize=6, color=color)
    for arm, marker in zip(ORT_ARMS, ("*", "D"), strict=True):
        for r in rows:
            if r.get("domain") != "onnxruntime" or r.get("arm") != arm or r.get(key) is None:
                continue
            lab = f"onnxruntime {arm} (float twin)"
            if r.get("test_accuracy") is None:
                ax.axvline(float(r[key]), color="k", ls="--" if arm == "fp32" else ":",
                           lw=1, label=lab + ", accuracy not measured")
            else:
                ax.plot(float(r[key]), 100 * float(r["test_accuracy"]), marker, color="k",
                        ms=9, label=lab)
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%), last epoch")
    ax.set_title("runs (dots; x = flagged collapsed), (arm, EC) means with 95 % t intervals",
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return True


def _cpu_ms(rows: list[dict]) -> str:
    vals = [float(r["latency_b1_cpu_ms"]) for r in rows if r.get("latency_b1_cpu_ms") is not None]
    return f"{statistics.mean(vals):.4f}" if vals else "–"


def _deploy_section(rows: list[dict]) -> list[str]:
    """README lines: accuracy against latency and file bytes (scripts/study_latency.py)."""
    runs = [r for r in rows if r.get("domain") in ARMS]
    timed = [r for r in runs if r.get("latency_b1_ms") is not None]
    out = ["## Accuracy against latency and file bytes", ""]
    if not timed:
        return out + [f"Not measured yet (0 of {len(runs)} runs timed). Once the runs are "
                      "done: `bash docs/study_domains/run_latency.sh` (trains the float twin "
                      "once, then `scripts/study_latency.py` and this script).", ""]
    loads = sorted({f"{float(r['latency_load']):.1f}" for r in timed
                    if r.get("latency_load") is not None})
    cpus = sorted({str(r["latency_cpu"]) for r in timed if r.get("latency_cpu")})
    isas = sorted({str(r["latency_isa"]) for r in timed if r.get("latency_isa")})
    out += [f"{len(timed)} of {len(runs)} runs timed by `scripts/study_latency.py`: the native "
            "engine at batch 1, one thread, its own kernel choice per layer; the median of the "
            "timed calls, best of the interleaved rounds; file bytes = the `.sbnn` file. "
            f"CPU {cpus or '–'}, ISA {isas or '–'}, 1-minute load when measured {loads or '–'} "
            "(a loaded machine inflates every number alike; compare within one measurement). "
            "The CPU-time column is the same statistic of the process's CPU time (one thread: "
            "the latency without the time other processes held the core), the steadier figure "
            "on a shared machine.",
            "", "| EC | arm | runs | latency b1 (ms), mean | CPU time b1 (ms), mean | file bytes, "
            "mean | accuracy (%), mean |", "|---|---|---|---|---|---|---|"]
    for ec in ECS:
        for d in ARMS:
            cell = [r for r in timed if r["domain"] == d and abs(float(r["ec"]) - ec) < 1e-12]
            if not cell:
                continue
            lat = statistics.mean(float(r["latency_b1_ms"]) for r in cell)
            byt = statistics.mean(float(r["model_bytes"]) for r in cell if r.get("model_bytes")
                                  is not None)
            acc = statistics.mean(100 * float(r["test_accuracy"]) for r in cell)
            out.append(f"| {ec:g} | {d} | {len(cell)} | {lat:.4f} | {_cpu_ms(cell)} | "
                       f"{byt:.0f} | {acc:.2f} |")
    ort = [r for r in rows if r.get("domain") == "onnxruntime"]
    for r in ort:
        acc = "not measured (twin not trained)" if r.get("test_accuracy") is None else \
            f"{100 * float(r['test_accuracy']):.2f}"
        lat = "–" if r.get("latency_b1_ms") is None else f"{float(r['latency_b1_ms']):.4f}"
        out.append(f"| – | onnxruntime {r.get('arm')} ({r.get('twin') or 'float twin'}) | 1 | "
                   f"{lat} | {_cpu_ms([r])} | {r.get('model_bytes') or '–'} | {acc} |")
    if not ort:
        out += ["", "The onnxruntime baselines were not measured (onnxruntime missing, or "
                "`--no-ort`)."]
    elif all(r.get("test_accuracy") is None for r in ort):
        out += ["", "The onnxruntime points are the float twin's latency and ONNX file size "
                "only: the study has no trained float twin yet, so they are drawn as vertical "
                "lines. `bash docs/study_domains/run_latency.sh` trains one and measures again."]
    out += ["", "![accuracy vs latency](study_accuracy_vs_latency.png)",
            "![accuracy vs file bytes](study_accuracy_vs_bytes.png)", ""]
    return out


def analysis_lines(study_dir: Path) -> list[str]:
    """The hand-written prose of ``STUDY_DIR/analysis.md`` (measurements that explain the
    numbers, e.g. why a cell collapsed), embedded as it is after the verdict; none if absent."""
    path = study_dir / "analysis.md"
    if not path.is_file():
        return []
    return [path.read_text(encoding="utf-8").rstrip("\n"), ""]


def _setup_section(rows: list[dict]) -> list[str]:
    """README lines: the title, the status, the set-up and the commands."""
    total = len(ARMS) * len(ECS) * len(SEEDS)
    have = sum(1 for r in rows if r.get("domain") in ARMS)
    steps = sorted({int(r["steps"]) for r in rows if r.get("steps") is not None})
    cpus = sorted({str(r["cpu_model"]) for r in rows if r.get("cpu_model")})
    threads = sorted({int(r["threads"]) for r in rows if r.get("threads") is not None})
    modes = sorted({str(r["sparsity_mode"]) for r in rows if r.get("sparsity_mode")})
    return [
        "# Does {α, β} beat {0, 1} and ±1? The primary domain study",
        "",
        "<!-- generated by `python scripts/study_report.py docs/study_domains` from results.csv:"
        " edit the script, not this file -->",
        "",
        f"**Status: {have} of {total} runs in `results.csv`** (4 arms × 4 EC × seeds 0-3). "
        "The study spans several sittings: the sweep appends each finished run's row and skips "
        "rows already there, so rerunning the command below on any machine continues it.",
        "",
        "## Set-up",
        "",
        "- Network and recipe: the main job's (`fmnist_cnn` on Fashion-MNIST, Adam 1e-3, "
        "per-step cosine, batch 128), base config [`config.yaml`](config.yaml), with "
        "**exact sparsity** (`sparsity.mode: exact`: after every optimiser step each binary "
        "layer holds exactly round(EC·n) ones; no penalty) and 2 epochs = 938 steps per run.",
        "- Arms, all from the closed-form start (`--arm cf`: the latent weights split at the "
        "target, levels fitted by least squares under the arm's tie): `ab` (r = α/(β−α) "
        "learned per layer), `abr` (r fixed at −EC, the least-squares value; "
        "[../DOMAINS.md](../DOMAINS.md)), `01` (r = 0), `pm1` (r = −½). In exact mode the "
        "scale τ of `abr`, `01` and `pm1` is frozen (BatchNorm absorbs it); `ab` keeps τ and "
        "φ free.",
        "- EC (target ones fraction) 0.25, 0.10, 0.05, 0.01; seeds 0-3. Same seed = same "
        "initial weights and data order in every arm, so differences are paired by seed.",
        "- Accuracy: test accuracy of the **last** epoch's model (`last.pt`) for every arm "
        "(`best_test_accuracy` is in the CSV but not used here).",
        f"- Recorded in the rows: steps {steps or '–'}, sparsity mode {modes or '–'}, CPU "
        f"{cpus or '–'}, threads {threads or '–'}. Another CPU acts like another seed.",
        "- A run is flagged `collapsed` when its final accuracy is > 5 points under its best "
        "epoch's or its ones fraction fell under half the target; flagged runs are kept in "
        "every mean and test (never dropped) and drawn as x.",
        "",
        "Commands:",
        "",
        "```",
        SWEEP_CMD,
        "python scripts/study_report.py docs/study_domains   # this README and the figure",
        "```",
        "",
        "Reproduce one row (tolerance: 1 point or 2 SD of that cell's seeds, whichever is "
        "larger):",
        "",
        "```",
        REPRO_CMD,
        "```",
        "",
    ]


def _verdict_section(rows: list[dict]) -> list[str]:
    """README lines: the claim, the verdict in words and how the p-values were computed."""
    return [
        "## Verdict",
        "",
        "The claim under test: learned {α, β} (`ab`) keeps accuracy at high sparsity better "
        "than `01` and `pm1`. What the r analysis ([../DOMAINS.md](../DOMAINS.md)) predicts: "
        "`ab` differs from `01` by one coefficient per layer on a shared window-sum map whose "
        "varying part is about √p of the signal, so an `ab` − `01` difference, if any, should "
        "show at EC 0.25-0.10 and shrink at 0.05-0.01; `pm1` (r = −½) is far from the "
        "least-squares r ≈ −p at every EC; `ab` − `abr` measures what learning r adds over "
        "the closed-form −EC.",
        "",
        *_verdict(rows),
        "",
        f"p-values: two-sided paired t-tests over the seeds both arms have (exact Student t "
        f"for integer degrees of freedom, computed in `sbnn.pipeline.study`; scipy is not "
        f"used). With {len(COMPARISONS) * len(ECS)} comparisons, p < 0.05 alone is weak "
        "evidence; the Bonferroni threshold is stated where it applies. Two seeds give one "
        "degree of freedom: such intervals are very wide (t₀.₉₇₅ = 12.7).",
        "",
    ]


def _differences_section(rows: list[dict]) -> list[str]:
    """README lines: the paired differences per EC."""
    out = [
        "## Paired differences (accuracy points, same seed)",
        "",
        "| EC | comparison | seeds | status | mean | 95 % CI | p (paired t) |",
        "|---|---|---|---|---|---|---|",
    ]
    for ec in ECS:
        for a, b in COMPARISONS:
            st = comparison(rows, a, b, ec)
            ci = fmt_ci(st, sign=True)
            out.append(f"| {ec:g} | {a} − {b} | {','.join(map(str, st['seeds'])) or '–'} | "
                       f"{_status(st['n'])} | {fmt_num(st['mean'], sign=True)} | {ci} | "
                       f"{fmt_p(st['p'])} |")
    return out + [""]


def _cells_section(rows: list[dict]) -> list[str]:
    """README lines: the (EC, arm) cells and the r check."""
    out = ["## Cells (test accuracy %, mean over seeds with 95 % t interval)", "",
           "| EC | arm | seeds | mean | 95 % CI | achieved ones | r = α/(β−α), mean over layers "
           "and seeds | collapsed |",
           "|---|---|---|---|---|---|---|---|"]
    for ec in ECS:
        for d in ARMS:
            st = cell_stats(rows, d, ec)
            ci = fmt_ci(st)
            ones = "–" if st["ones"] is None else f"{st['ones']:.4f}"
            out.append(f"| {ec:g} | {d} | {','.join(map(str, st['seeds'])) or 'pending'} | "
                       f"{fmt_num(st['mean'])} | {ci} | {ones} | "
                       f"{fmt_num(st['r'], 3, sign=True)} | {st['collapsed']} |")
    out += ["", "The r column checks the analysis: `abr` holds −EC by construction, `01` 0, "
            "`pm1` −½; for `ab` it is what training learned from the closed-form start at −EC.", "",
            "![accuracy vs achieved ones](study_accuracy_vs_ones.png)", ""]
    return out


def _runs_in(*csvs: Path) -> int:
    from sbnn.pipeline.sweep import read_rows

    return sum(len(read_rows(c)) for c in csvs)


def _later_section(study_dir: Path) -> list[str]:
    """README lines: the secondary parts beside the primary grid (with their run counts), and
    the files."""
    pen = _runs_in(study_dir / "penalty" / "results.csv")
    sub = _runs_in(*(study_dir / "subbit" / d / "results.csv" for d in ("k4", "k5", "k6",
                                                                        "sbnn")))
    return ["## Beside the primary grid", "",
            "- The secondary grid with the paper's penalty, its fifth arm (ReActNet-style ±1 "
            "with per-channel mean|w| scaling, `pm1c`) and the curve from 100 % ones: "
            f"[penalty/](penalty/), {pen} of 24 runs. Why `01` misses its target in penalty "
            "mode is measured in [../RESULTS.md](../RESULTS.md) (section 5).",
            "- The trained Sub-bit baseline at equal bits per weight: [subbit/](subbit/), "
            f"{sub} of 18 runs.", "",
            "Files: `results.csv` (one row per run, appended by the sweep), `config.yaml`, "
            "`run_study.sh`, `analysis.md` (hand-written, embedded above when present), "
            "this README and `study_accuracy_vs_{ones,latency,bytes}.png` (all "
            "from `scripts/study_report.py`; the latency and bytes columns from "
            "`scripts/study_latency.py`); `results.md` and `accuracy_vs_*.png` are the sweep's "
            "own summary (mean ± SD).", ""]


def write_report(study_dir: str | Path, figures: bool = True) -> str:
    """Write ``README.md`` (and the figures) of ``study_dir`` from its ``results.csv``; returns
    the README text."""
    from sbnn.pipeline.sweep import read_rows

    study_dir = Path(study_dir)
    rows = read_rows(study_dir / "results.csv")
    out = [*_setup_section(rows), *_verdict_section(rows), *analysis_lines(study_dir),
           *_differences_section(rows), *_cells_section(rows), *_deploy_section(rows),
           *_later_section(study_dir)]
    text = "\n".join(out)
    write_text(study_dir / "README.md", text)
    if figures and rows:
        figure(rows, study_dir / "study_accuracy_vs_ones.png")
    if figures and any(r.get("latency_b1_ms") is not None for r in rows):  # as the README says
        deploy_figure(rows, "latency_b1_ms", "engine latency, batch 1, 1 thread (ms, log)",
                      study_dir / "study_accuracy_vs_latency.png")
        deploy_figure(rows, "model_bytes", "model file bytes (log)",
                      study_dir / "study_accuracy_vs_bytes.png")
    return text
