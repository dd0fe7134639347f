"""The torch-free runtime gives the full install's outputs, bit for bit at one thread.

Three steps, each in its own interpreter (``.ci/run`` runs them):

    python scripts/runtime_check.py export DIR        # full install: sbnn + torch
    .venv-rt/bin/python scripts/runtime_check.py run DIR   # numpy + sbnn_runtime only
    python scripts/runtime_check.py compare DIR       # full install again

``export`` builds the main job's network (``Config()``: fmnist_cnn, closed-form start at its EC)
and ``resnet18_irnet`` (closed-form start at 5 % ones), with non-trivial BatchNorm statistics,
writes both as ``.sbnn`` files plus fixed inputs, and runs them with the full install's
``sbnn.engine`` at one thread. ``run`` loads the same files with ``sbnn_runtime`` alone and
fails if torch or sbnn was imported. ``compare`` asserts the outputs are equal bit for bit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

MODELS = ("fmnist_main_job", "resnet18_irnet")


def _randomise_batchnorm(model, seed: int) -> None:
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def export(out: Path) -> None:
    import torch

    from sbnn import engine, models
    from sbnn.deploy.export import export as export_sbnn
    from sbnn.pipeline.config import Config
    from sbnn.pipeline.runs import build_model
    from sbnn.verbs.binarize import init_closed_form_

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = Config()  # the main job
    main = build_model(cfg, 10, 1)
    init_closed_form_(main, cfg.sparsity.ec)
    resnet = models.create("resnet18_irnet", num_classes=10, in_chans=3)
    init_closed_form_(resnet, 0.05)
    rng = np.random.default_rng(0)
    summary = {}
    for name, model, shape, batch in (("fmnist_main_job", main, (1, 28, 28), 8),
                                      ("resnet18_irnet", resnet, (3, 32, 32), 4)):
        _randomise_batchnorm(model, seed=len(name))
        model.eval()
        graph = export_sbnn(model, out / f"{name}.sbnn", shape, metadata={"check": name})
        x = rng.standard_normal((batch, *shape), dtype=np.float32)
        np.save(out / f"{name}.input.npy", x)
        y = engine.load(out / f"{name}.sbnn", num_threads=1)(x)
        np.save(out / f"{name}.full.npy", y)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        summary[name] = {"nodes": len(graph.nodes), "output": list(y.shape),
                         "max_abs_diff_vs_torch": float(np.abs(y - want).max()),
                         "max_abs_logit": float(np.abs(want).max())}
    (out / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("runtime_check export:", json.dumps(summary))


def run(out: Path) -> None:
    import sbnn_runtime

    for name in MODELS:
        x = np.load(out / f"{name}.input.npy")
        eng = sbnn_runtime.load(out / f"{name}.sbnn", num_threads=1)
        if eng.backend != "native":
            raise SystemExit(f"runtime_check run: {name} ran on the {eng.backend} backend; the "
                             "native core did not build in this venv")
        y = eng(x)
        np.save(out / f"{name}.runtime.npy", y)
        ref = sbnn_runtime.load(out / f"{name}.sbnn", backend="reference")(x)
        err = float(np.abs(ref - y).max() / max(float(np.abs(ref).max()), 1e-12))
        if not err < 1e-3:
            raise SystemExit(f"runtime_check run: {name}: native and numpy reference differ by "
                             f"{err:.3g} (relative)")
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "sbnn"))
    if leaked:
        raise SystemExit(f"runtime_check run: the runtime imported {leaked}")
    print(f"runtime_check run: {len(MODELS)} models ran with numpy {np.__version__} and "
          f"sbnn_runtime only")


def compare(out: Path) -> None:
    for name in MODELS:
        a = np.load(out / f"{name}.full.npy")
        b = np.load(out / f"{name}.runtime.npy")
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            diff = float(np.abs(a.astype(np.float64) - b).max()) if a.shape == b.shape else None
            raise SystemExit(f"runtime_check compare: {name}: the numpy-only runtime's output "
                             f"differs from the full install's (max abs diff {diff})")
        print(f"runtime_check compare: {name} {a.shape}: bit-identical")


def main(argv: list[str]) -> int:
    steps = {"export": export, "run": run, "compare": compare}
    if len(argv) != 2 or argv[0] not in steps:
        print(f"usage: runtime_check.py {{{','.join(steps)}}} DIR", file=sys.stderr)
        return 2
    steps[argv[0]](Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
