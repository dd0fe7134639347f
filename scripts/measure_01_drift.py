"""Why ``01`` misses its target in penalty mode: measure the task gradient's mean-shift force.

For each (domain, EC) this trains the main job (penalty mode, the paper's gamma) for a few
hundred steps and logs, every ``--every`` steps, the global ones fraction and, per binary layer,
the mean *task* gradient (cross-entropy only, before the penalty is added) on the latent weights of
the 1-bits and of the 0-bits, in units of the penalty's per-weight gradient at that step.

    python scripts/measure_01_drift.py --steps 300 --out docs/study_domains/penalty_01_drift.csv

A BatchNorm after the layer makes the loss invariant to the scale of q, so the task gradient
``g = dL/dq`` satisfies ``sum_k q_k g_k = 0``. In ``01`` (q = 2 tau b) that is ``sum over the
1-bits of g = 0``: the ones feel no net push, and the whole mean-shift ``sum_k g_k`` (the
gradient along ``r``, the coefficient of the shared window-sum map, docs/DOMAINS.md) lands on the
0-bits. In ``ab`` the free phi takes that gradient (``dL/dphi = sum_k g_k``) and Adam drives it
to about 0. See docs/TRAINING.md for the figures this prints.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F


def measure(domain: str, ec: float, steps: int, every: int, seed: int, threads: int) -> list[dict]:
    from sbnn.method.constraint import sb_layers
    from sbnn.pipeline.config import load_config
    from sbnn.pipeline.sweep import gamma_for
    from sbnn.pipeline.train import Trainer

    torch.set_num_threads(threads)
    cfg = load_config(None, [f"model.domain='{domain}'", "progress=false", "device=cpu",
                             f"threads={threads}", f"seed={seed}"])
    cfg = replace(cfg, sparsity=replace(cfg.sparsity, ec=ec, gamma=gamma_for(ec)))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(cfg, out=f"{tmp}/run")
    model, opt, sched, con = t.model, t.optimizer, t.scheduler, t.constraint
    layers = [m for _, m in sb_layers(model)]
    weights = [m.weight for m in layers]
    model.train()
    t.train_loader.set_epoch(0)
    rows, step = [], 0
    while step < steps:
        for x, y in t.train_loader:
            loss = F.cross_entropy(model(x), y)
            pen = con(loss)
            grads = torch.autograd.grad(loss, weights, retain_graph=True)
            if step % every == 0:
                # the penalty's gradient per latent weight: lambda * (1/2) / n (0 when inactive)
                unit = con.last["lambda"] * 0.5 / con.num_weights
                row = {"domain": domain, "ec": ec, "step": step,
                       "ones_fraction": con.last["ones_fraction"], "penalty_grad": unit}
                for i, (m, g) in enumerate(zip(layers, grads, strict=True)):
                    b = m.bits()
                    row[f"l{i}_ones"] = float(b.float().mean())
                    row[f"l{i}_g1"] = float(g[b].mean()) if b.any() else 0.0
                    row[f"l{i}_g0"] = float(g[~b].mean()) if (~b).any() else 0.0
                rows.append(row)
            opt.zero_grad(set_to_none=True)
            (loss + pen).backward()
            opt.step()
            sched.step()
            con.clamp_()
            step += 1
            if step >= steps:
                break
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domains", default="01,learned")
    p.add_argument("--ecs", default="0.25,0.01")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    rows = []
    for d in a.domains.split(","):
        for ec in (float(e) for e in a.ecs.split(",")):
            rows += measure(d, ec, a.steps, a.every, a.seed, a.threads)
            last = rows[-1]
            print(f"{d} ec {ec:g}: ones {last['ones_fraction']:.4f} after {last['step']} steps",
                  flush=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
