"""Host side of scripts/mcu_test.sh: make the model and its inputs, then judge the MCU's logits.

    python scripts/mcu/mcu_check.py prepare OUT [--run RUN] [--n 200] [--model dscnn] [--int8]
    python scripts/mcu/mcu_check.py compare OUT

``prepare`` writes OUT/c/model.{c,h} (the C export), OUT/model.sbnn, OUT/inputs.bin (the first
``n`` Fashion-MNIST test images, normalised as in training, float32 NCHW) and the reference
logits of PyTorch and of the sbnn engine (OUT/ref.npz). Without ``--run`` the model is the
main job's network (``fmnist_cnn`` at its defaults) started in closed form at EC 0.05 (as
``sbnn train`` starts it) with its BatchNorm statistics measured on 2000 training images: an
untrained but realistically scaled network, so every binarisation sees real activations.
``--model dscnn``: the binarized DS-CNN for keyword spotting (MLPerf Tiny's layout, binary
pointwise convs, float stem, depthwise convs and classifier) on (1, 49, 10) MFCC-shaped
inputs, made the same way; there is no keyword dataset offline, so its inputs are standard
normal (MFCCs are normalised per coefficient) and it has no labels. ``--int8``: the float layers
in int8 (as ``sbnn export --int8`` makes them, calibrated on 4 x 128 training inputs), the
engine's reference logits of that graph, and OUT/c_fp32/model.{c,h}: the same network with
fp32 float layers, which the script compiles beside it to compare their flash.

``compare`` reads OUT/logits.bin written by the firmware and checks the floors: predictions
equal PyTorch's on >= 99.5 % of the images, and logits within 1e-3 of the engine's relative
to the image's largest (every image); it also reports the gap to PyTorch. With ``--int8`` the
PyTorch model is fp32, so its agreement is reported, not held to the floor (the int8 floor,
accuracy within 0.5 points, is measured by ``sbnn export --int8``). Exit 1 on a miss.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

PRED_FLOOR = 0.995
RTOL = 1e-3


def _data(n: int, train: bool):
    from sbnn.pipeline.data import load_dataset, normalize

    ds = load_dataset("fashion_mnist", train=train)
    x = ds.images[:n].float().div(255)
    return normalize(x, ds.mean, ds.std).contiguous(), ds.labels[:n]


# the networks it runs: input shape, classes, and their inputs (n, train) -> (x, labels or None)
MODELS = {
    "fmnist_cnn": ((1, 28, 28), 10, lambda n, train: _data(n, train)),
    "dscnn": ((1, 49, 10), 12, lambda n, train: (torch.randn(
        n, 1, 49, 10, generator=torch.Generator().manual_seed(1 + int(train))), None)),
}


def _model(run: str | None, name: str = "fmnist_cnn"):
    import sbnn
    from sbnn import models

    if run:
        from sbnn.pipeline.runs import load_model

        return load_model(run, "last"), f"run folder {run} (last.pt)"
    torch.manual_seed(0)
    _, classes, data = MODELS[name]
    model = models.create(name, num_classes=classes)
    sbnn.init_closed_form_(model, 0.05)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = None  # cumulative: running stats = the calibration images' stats
        bn.reset_running_stats()
    x, _ = data(2000, True)
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 250):
            model(x[i:i + 250])
    return model.eval(), (f"{name} (registry defaults), closed form at EC 0.05, BatchNorm "
                          "statistics from 2000 training inputs (untrained)")


def prepare(out: Path, run: str | None, n: int, name: str = "fmnist_cnn",
            int8: bool = False) -> int:
    from sbnn.deploy.export import export
    from sbnn_runtime.engine import Engine
    from sbnn_runtime.lower_c import export_c, format_sizes, generate_c
    from sbnn_runtime.summary import format_summary, summarize

    out.mkdir(parents=True, exist_ok=True)
    model, what = _model(run, name)
    shape, _, data = MODELS[name]
    calib = data(512, True)[0].numpy() if int8 else None
    if int8:
        what += "; float layers in int8, calibrated on 4 x 128 training inputs"
    print(f"model: {what}")
    graph = export(model, out / "model.sbnn", shape, metadata={"model": name}, int8=calib)
    cm = export_c(graph, out / "c")
    if int8:  # the same network with fp32 float layers: its flash is the baseline
        from sbnn.deploy.export import to_graph

        fp = generate_c(to_graph(model, shape))
        (out / "c_fp32").mkdir(exist_ok=True)
        (out / "c_fp32" / "model.c").write_text(fp.model_c)
        (out / "c_fp32" / "model.h").write_text(fp.model_h)
    print(format_summary(summarize(graph)))
    print(format_sizes(cm))
    x, labels = data(n, False)
    with torch.no_grad():
        torch_logits = model(x).numpy()
    eng = Engine(graph, num_threads=1)(x.numpy())
    (out / "inputs.bin").write_bytes(np.ascontiguousarray(x.numpy(), np.float32).tobytes())
    np.savez(out / "ref.npz", torch=torch_logits, engine=eng,
             labels=np.full(n, -1) if labels is None else labels.numpy())
    (out / "model.json").write_text(json.dumps({"model": what, "images": n, "int8": int8,
                                                "arena_bytes": cm.arena_bytes,
                                                "weight_bytes": cm.const_bytes}))
    print(f"wrote {out}/c/model.c, model.h, the kernels, inputs.bin ({n} test images)")
    return 0


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).max(1) / np.abs(b).max(1).clip(1e-12)


def compare(out: Path) -> int:
    ref = np.load(out / "ref.npz")
    want_t, want_e, labels = ref["torch"], ref["engine"], ref["labels"]
    got = np.fromfile(out / "logits.bin", np.float32)
    if got.size != want_e.size:
        print(f"mcu: logits.bin has {got.size} floats, expected {want_e.size}", file=sys.stderr)
        return 1
    got = got.reshape(want_e.shape)
    n = len(got)
    pred_t = float((got.argmax(1) == want_t.argmax(1)).mean())
    pred_e = float((got.argmax(1) == want_e.argmax(1)).mean())
    rel_e, rel_t = _rel(got, want_e), _rel(got, want_t)
    int8 = bool(json.loads((out / "model.json").read_text()).get("int8"))
    print(f"images                      {n}")
    print(f"predictions = PyTorch       {pred_t * 100:.2f} %  " + (
        "(PyTorch fp32, the model int8: no floor)" if int8 else
        f"(floor {PRED_FLOOR * 100:.1f} %)"))
    print(f"predictions = engine        {pred_e * 100:.2f} %")
    print(f"max logit gap vs engine     {rel_e.max():.3g}  (relative to the image's largest; "
          f"floor {RTOL:g})")
    print(f"max logit gap vs PyTorch    {rel_t.max():.3g}; images over {RTOL:g}: "
          f"{int((rel_t > RTOL).sum())}")
    if (labels >= 0).all():
        print(f"accuracy (C model, labels)  {(got.argmax(1) == labels).mean() * 100:.2f} %")
    ok = (int8 or pred_t >= PRED_FLOOR) and bool((rel_e <= RTOL).all())
    print("mcu: PASS" if ok else "mcu: FAIL")
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("out")
    p.add_argument("--run", help="run folder to export (default: closed-form fmnist_cnn)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--model", choices=sorted(MODELS), default="fmnist_cnn",
                   help="the network without --run (default: fmnist_cnn)")
    p.add_argument("--int8", action="store_true",
                   help="float layers in int8; also write c_fp32/ (fp32 float layers)")
    c = sub.add_parser("compare")
    c.add_argument("out")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.cmd == "prepare":
        return prepare(Path(a.out), a.run, a.n, a.model, a.int8)
    return compare(Path(a.out))


if __name__ == "__main__":
    sys.exit(main())
