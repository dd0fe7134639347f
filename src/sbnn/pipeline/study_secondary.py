"""Reports of the domain study's two secondary parts, regenerated from their CSVs.

- The penalty grid (``docs/study_domains/penalty/``): the paper's hinge penalty instead of exact
  sparsity, arms ``ab``, ``01``, ``pm1`` and the authors' ReActNet-style ``pm1c``; the arms end
  at different ones fractions, so the achieved fraction is reported beside every accuracy and is
  the figure's x-axis. With the one measured curve from 100 % ones (``ones_from_full/``).
- The trained Sub-bit comparison (``docs/study_domains/subbit/``): Sub-bit with 2^k learned
  kernel patterns (k/9 bits per weight) against SBNN at the EC whose entropy H(EC) equals k/9,
  paired by seed.

``python scripts/study_report.py --kind penalty|subbit DIR`` writes ``DIR/README.md`` and the
figures; hand-written prose in ``DIR/analysis.md`` is embedded after the tables when present.
The statistics are the primary study's (:mod:`sbnn.pipeline.study`).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from sbnn.pipeline.runs import save_figure, write_text
from sbnn.pipeline.study import (
    analysis_lines,
    cell_stats,
    comparison,
    figure,
    fmt_num,
    fmt_p,
    paired,
    write_report,
)

__all__ = ["PENALTY_ARMS", "PENALTY_ECS", "SUBBIT_EC", "entropy", "write_penalty_report",
           "write_subbit_report", "report"]

PENALTY_ARMS = ("ab", "01", "pm1", "pm1c")
PENALTY_ECS = (0.25, 0.05, 0.01)
PENALTY_SEEDS = (0, 1)
PENALTY_CMP = (("ab", "01"), ("ab", "pm1"), ("ab", "pm1c"))
# Sub-bit's k (2**k patterns per 3x3 kernel, k/9 bits per weight) -> the EC with H(EC) = k/9
SUBBIT_EC = {4: 0.0924, 5: 0.1293, 6: 0.174}
SUBBIT_SEEDS = (0, 1, 2)


def entropy(p: float) -> float:
    """H(p) in bits, the entropy bound of one weight that is a 1-bit with probability p."""
    if not 0.0 < p < 1.0:
        return 0.0
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def _mean(rows: list[dict], key: str, scale: float = 1.0) -> float | None:
    vals = [scale * float(r[key]) for r in rows if r.get(key) is not None]
    return statistics.mean(vals) if vals else None


def _ci(st: dict, sign: bool = False) -> str:
    if st["lo"] is None:
        return "–"
    return f"[{fmt_num(st['lo'], sign=sign)}, {fmt_num(st['hi'], sign=sign)}]"


def _same(a, b) -> bool:
    return a is not None and abs(float(a) - b) < 1e-12


# --------------------------------------------------------------------------------------------
# the penalty grid
# --------------------------------------------------------------------------------------------

def _curve_section(study_dir: Path) -> list[str]:
    """README lines: the curve from 100 % ones (``ones_from_full/ones_curve.csv``)."""
    from sbnn.pipeline.ones_curve import epochs_to_target
    from sbnn.pipeline.sweep import read_rows

    out = ["## From 100 % ones: one measured curve", "",
           "The authors' CIFAR recipe starts at 100 % ones (`sparsity.init: authors`, τ = 1, "
           "φ = 0) and lets the penalty bring the ones fraction down. One curve measures how fast "
           "that goes on this network (target EC 0.05, the `ab` domain, the grid's recipe with a "
           "20-epoch cosine schedule):", "",
           "```",
           "python scripts/ones_from_full.py -c docs/study_domains/penalty/config.yaml --ec 0.05 "
           "\\",
           "    --epochs 20 --stop-after 4 --out docs/study_domains/penalty/ones_from_full",
           "# rerun the same line to add 4 more epochs (it resumes from its last.pt)",
           "```", ""]
    rows = read_rows(study_dir / "ones_from_full" / "ones_curve.csv")
    if not rows:
        return out + ["Not run yet: no curve is claimed here until it is measured.", ""]
    out += ["| epoch | ones fraction | test accuracy (%) |", "|---|---|---|"]
    for r in rows:
        acc = r.get("test_accuracy")
        out.append(f"| {r['epoch']} | {float(r['ones_fraction']):.4f} | "
                   f"{'–' if acc is None else f'{100 * float(acc):.2f}'} |")
    more = epochs_to_target(rows, 0.05)
    last = rows[-1]
    if more is None:
        word = "the ones fraction did not fall over the last epoch, so no extrapolation"
    elif more == 0:
        word = "the target is reached"
    else:
        word = (f"at the last epoch's rate (a geometric extrapolation, optimistic: the cosine "
                f"schedule slows it) the target 0.05 needs about {more:.0f} more epochs")
    out += ["", f"After {last['epoch']} epochs the ones fraction is "
            f"{float(last['ones_fraction']):.4f}; {word}. The grid above therefore starts every "
            "arm from the closed-form split at the target instead of running this start short.",
            "", "![ones fraction from 100 %](ones_from_full/ones_curve.png)", ""]
    return out


def write_penalty_report(study_dir: str | Path, figures: bool = True) -> str:
    """``README.md`` (and ``accuracy_vs_achieved_ones.png``) of the penalty grid."""
    from sbnn.pipeline.sweep import read_rows

    study_dir = Path(study_dir)
    rows = read_rows(study_dir / "results.csv")
    total = len(PENALTY_ARMS) * len(PENALTY_ECS) * len(PENALTY_SEEDS)
    have = sum(1 for r in rows if r.get("domain") in PENALTY_ARMS)
    out = ["# The secondary grid: the paper's penalty instead of exact sparsity", "",
           "<!-- generated by `python scripts/study_report.py --kind penalty "
           "docs/study_domains/penalty` from results.csv: edit the script, not this file -->",
           "", f"**Status: {have} of {total} runs in `results.csv`** (4 arms × 3 EC × seeds "
           "0-1).", "",
           "## What it measures", "",
           "The primary study ([../README.md](../README.md)) holds every layer at exactly "
           "round(EC·n) ones (`sparsity.mode: exact`), so its arms are compared at the same "
           "sparsity. This grid keeps the paper's own mechanism instead: the hinge penalty with "
           "the authors' γ for each EC (`sparsity.mode: penalty`, the sweep's `gamma_for`), from "
           "the closed-form start (latent weights split at the target, levels fitted; "
           "`--arm cf`). The arms then do **not** end at the same ones fraction (`01` drifts: "
           "[../../RESULTS.md](../../RESULTS.md), section 5), so the **achieved** ones fraction "
           "is reported per run and is the x-axis of the figure.", "",
           "- Network and recipe: the main job's (`fmnist_cnn`, Adam 1e-3, per-step cosine, "
           "batch 128), [`config.yaml`](config.yaml), 2 epochs = 938 steps per run like the "
           "primary study; test accuracy of the last epoch's model for every arm.",
           "- Arms: `ab` (learned {α, β}), `01`, `pm1` (learned scale) and the fifth arm "
           "**`pm1c`**, the authors' ReActNet-style ±1 baseline: q = m_c·sign(w) with m_c = "
           "mean|w| over output channel c, recomputed each forward without gradient, no learned "
           "level (`model.domain: pm1c`).",
           "- EC 0.25, 0.05, 0.01; seeds 0-1 (same seed = same initial weights and data order).",
           "", "```",
           "bash docs/study_domains/penalty/run_penalty.sh   # the grid, then latency and bytes",
           "python scripts/study_report.py --kind penalty docs/study_domains/penalty",
           "```", "",
           "## Cells (test accuracy %, mean over seeds)", "",
           "| EC | arm | seeds | accuracy | 95 % CI | achieved ones | ones / target | "
           "latency b1 (ms) | file bytes | collapsed |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for ec in PENALTY_ECS:
        for d in PENALTY_ARMS:
            st = cell_stats(rows, d, ec)
            cell = [r for r in rows if r.get("domain") == d and _same(r.get("ec"), ec)]
            ones = "–" if st["ones"] is None else f"{st['ones']:.4f}"
            ratio = _mean(cell, "ones_over_target")
            lat = _mean(cell, "latency_b1_ms")
            byt = _mean(cell, "model_bytes")
            out.append(f"| {ec:g} | {d} | {','.join(map(str, st['seeds'])) or 'pending'} | "
                       f"{fmt_num(st['mean'])} | {_ci(st)} | {ones} | {fmt_num(ratio)} | "
                       f"{fmt_num(lat, 4)} | {'–' if byt is None else f'{byt:.0f}'} | "
                       f"{st['collapsed']} |")
    out += ["", "## Paired differences (accuracy points, same seed)", "",
            "Two seeds give one degree of freedom (t₀.₉₇₅ = 12.7): these intervals are wide, and "
            "the arms are compared at their *achieved* ones fractions, which differ.", "",
            "| EC | comparison | seeds | mean | 95 % CI | p (paired t) |",
            "|---|---|---|---|---|---|"]
    for ec in PENALTY_ECS:
        for a, b in PENALTY_CMP:
            st = comparison(rows, a, b, ec)
            out.append(f"| {ec:g} | {a} − {b} | {','.join(map(str, st['seeds'])) or '–'} | "
                       f"{fmt_num(st['mean'], sign=True)} | {_ci(st, sign=True)} | "
                       f"{fmt_p(st['p'])} |")
    out += ["", "![accuracy vs achieved ones](accuracy_vs_achieved_ones.png)", "",
            *analysis_lines(study_dir), *_curve_section(study_dir),
            "Files: `results.csv` (one row per run, appended by the sweep; latency and file "
            "bytes from `scripts/study_latency.py --no-ort`), `config.yaml`, `run_penalty.sh`, "
            "`analysis.md` (hand-written, embedded when present), this README and "
            "`accuracy_vs_achieved_ones.png` (from `scripts/study_report.py --kind penalty`); "
            "`results.md` and `accuracy_vs_*.png` are the sweep's own summary.", ""]
    text = "\n".join(out)
    write_text(study_dir / "README.md", text)
    if figures and rows:
        figure(rows, study_dir / "accuracy_vs_achieved_ones.png", PENALTY_ARMS, PENALTY_ECS)
    return text


# --------------------------------------------------------------------------------------------
# the trained Sub-bit comparison
# --------------------------------------------------------------------------------------------

def _subbit_rows(study_dir: Path) -> dict:
    """k -> {"subbit": seed -> row, "sbnn": seed -> row}."""
    from sbnn.pipeline.sweep import read_rows

    sbnn = read_rows(study_dir / "sbnn" / "results.csv")
    out = {}
    for k, ec in SUBBIT_EC.items():
        sub = [r for r in read_rows(study_dir / f"k{k}" / "results.csv")
               if r.get("test_accuracy") is not None]
        out[k] = {"subbit": {int(r["seed"]): r for r in sub},
                  "sbnn": {int(r["seed"]): r for r in sbnn if r.get("domain") == "ab"
                           and _same(r.get("ec"), ec) and r.get("test_accuracy") is not None}}
    return out


def _subbit_figure(by_k: dict, path: Path) -> None:
    from sbnn.pipeline.plot import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (arm, label) in enumerate((("subbit", "Sub-bit, trained codebook (k/9 bits)"),
                                      ("sbnn", "SBNN ab, exact EC with H(EC) = k/9"))):
        xs, ys, es = [], [], []
        for k, runs in by_k.items():
            accs = [100 * float(r["test_accuracy"]) for r in runs[arm].values()]
            if not accs:
                continue
            x = k / 9 + (i - 0.5) * 0.006
            for a in accs:
                ax.plot(x, a, ".", color=f"C{i}", alpha=0.5)
            st = paired(accs)
            xs.append(x)
            ys.append(st["mean"])
            es.append(0.0 if st["hi"] is None else st["hi"] - st["mean"])
        if xs:
            ax.errorbar(xs, ys, yerr=es, fmt="o-", color=f"C{i}", capsize=3, label=label)
    ax.set_xticks([k / 9 for k in by_k])
    ax.set_xticklabels([f"{k / 9:.2f}" for k in by_k])
    ax.set_xlabel("bits per binary weight (Sub-bit: k/9; SBNN: H(EC))")
    ax.set_ylabel("test accuracy (%), last epoch")
    ax.set_title("runs (dots) and means with 95 % t intervals", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def write_subbit_report(study_dir: str | Path, figures: bool = True) -> str:
    """``README.md`` (and ``subbit_vs_sbnn.png``) of the trained Sub-bit comparison."""
    study_dir = Path(study_dir)
    by_k = _subbit_rows(study_dir)
    have = sum(len(v["subbit"]) + len(v["sbnn"]) for v in by_k.values())
    total = 2 * len(SUBBIT_EC) * len(SUBBIT_SEEDS)
    out = ["# Trained Sub-bit against SBNN at equal bits per weight", "",
           "<!-- generated by `python scripts/study_report.py --kind subbit "
           "docs/study_domains/subbit` from the CSVs: edit the script, not this file -->", "",
           f"**Status: {have} of {total} runs** (2 arms × 3 bit budgets × seeds 0-2).", "",
           "## The two arms", "",
           "- **Sub-bit, trained** (Y. Wang et al., \"Sub-bit Neural Networks\", ICCV 2021): a "
           "dense ±1 BNN (`pm1`, no sparsity target) whose 3x3 binary kernels may only take 2^k "
           "patterns per layer, the codebook learned *during training* "
           "(`prune.patterns_trained: true`, in `sbnn.verbs.prune.refine_patterns`): at every "
           "training forward each kernel takes its nearest codeword, each codeword makes one "
           "weighted k-means step towards its members' latent weights (an unused one is "
           "re-seeded with the kernel farthest from its codeword), and the straight-through "
           "estimator carries the gradient to the latent weights. A kernel is stored as a k-bit "
           "index: **k/9 bits per weight** (plus the 2^k × 9-bit codebook per layer). k = 4, 5, "
           "6 gives 0.44, 0.56, 0.67 bits. Config: [`config.yaml`](config.yaml) (k set by the "
           "script); sbnn's earlier form, a k-means codebook fixed at conversion "
           "(`sbnn convert --patterns K`), is `patterns_trained: false`.",
           "- **SBNN**: the primary study's recipe (`ab`, exact sparsity, "
           "[`../config.yaml`](../config.yaml)) at the EC whose entropy H(EC) equals k/9: "
           + ", ".join(f"H({ec}) = {entropy(ec):.3f}" for ec in SUBBIT_EC.values())
           + " bits per weight (the entropy bound of an ideal coder; the file's own bits per "
           "weight are in the `bits_per_binary_weight` column).",
           "- Both: `fmnist_cnn` on Fashion-MNIST, 2 epochs = 938 steps, seeds 0-2; same seed = "
           "same initial latent weights and data order (SBNN shifts them to its closed-form "
           "split, Sub-bit projects them on its first codebook). Test accuracy of the last "
           "epoch's model.", "",
           "```",
           "bash docs/study_domains/subbit/run_subbit.sh    # k4/, k5/, k6/ (Sub-bit), sbnn/",
           "python scripts/study_report.py --kind subbit docs/study_domains/subbit",
           "```", "",
           "## At equal bits per weight (test accuracy %, mean over seeds, 95 % t interval)", "",
           "| bits / weight | Sub-bit k | Sub-bit seeds | Sub-bit accuracy | SBNN EC | SBNN seeds "
           "| SBNN accuracy | SBNN − Sub-bit (paired) | 95 % CI | p (paired t) | file bits / "
           "binary weight, Sub-bit / SBNN |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, ec in SUBBIT_EC.items():
        sub, sb = by_k[k]["subbit"], by_k[k]["sbnn"]
        st_sub = paired([100 * float(r["test_accuracy"]) for r in sub.values()])
        st_sb = paired([100 * float(r["test_accuracy"]) for r in sb.values()])
        seeds = sorted(set(sub) & set(sb))
        d = paired([100 * (float(sb[s]["test_accuracy"]) - float(sub[s]["test_accuracy"]))
                    for s in seeds])
        bits = f"{fmt_num(_mean(list(sub.values()), 'bits_per_binary_weight'), 3)} / " \
               f"{fmt_num(_mean(list(sb.values()), 'bits_per_binary_weight'), 3)}"
        out.append(f"| {k / 9:.3f} | {k} | {','.join(map(str, sorted(sub))) or 'pending'} | "
                   f"{fmt_num(st_sub['mean'])} {_ci(st_sub)} | {ec} | "
                   f"{','.join(map(str, sorted(sb))) or 'pending'} | {fmt_num(st_sb['mean'])} "
                   f"{_ci(st_sb)} | {fmt_num(d['mean'], sign=True)} | {_ci(d, sign=True)} | "
                   f"{fmt_p(d['p'])} | {bits} |")
    out += ["", "Paired over the seeds both arms have; with 3 comparisons the Bonferroni "
            "threshold is p < 0.0167. The file column is what each `.sbnn` file really stores "
            "per binary weight, beside the nominal budget: the runtime's format has no "
            "pattern-index coding, so a Sub-bit file stores its kernels as ordinary bits "
            "(about 1 bit per weight) and k/9 is what a k-bit index per kernel would take; "
            "SBNN's file uses its sparse coding, whose bits approach H(EC) from above.", "",
            "![Sub-bit vs SBNN](subbit_vs_sbnn.png)", "",
            *analysis_lines(study_dir)]
    text = "\n".join(out)
    write_text(study_dir / "README.md", text)
    if figures and have:
        _subbit_figure(by_k, study_dir / "subbit_vs_sbnn.png")
    return text


KINDS = {"primary": ("docs/study_domains", "results.csv", write_report),
         "penalty": ("docs/study_domains/penalty", "results.csv", write_penalty_report),
         "subbit": ("docs/study_domains/subbit", "k4/results.csv", write_subbit_report)}


def report(kind: str, study_dir: str | Path | None = None) -> Path:
    """Write the README (and figures) of one part of the study: ``kind`` is ``primary``,
    ``penalty`` or ``subbit``; ``study_dir`` defaults to that part's folder. Returns the
    README's path; raises ``ValueError`` (one line) for an unknown kind or a folder without
    its CSV."""
    if kind not in KINDS:
        raise ValueError(f"unknown study part {kind!r}; valid: {', '.join(sorted(KINDS))}")
    default, needs, write = KINDS[kind]
    study = Path(study_dir or default)
    if not (study / needs).is_file() and not (study / "sbnn" / "results.csv").is_file():
        raise ValueError(f"no {needs} in '{study}'")
    write(study)
    return study / "README.md"
