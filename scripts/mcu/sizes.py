"""Flash and RAM of C exports on a Cortex-M4F (-Os), for the table of docs/DEPLOY.md.

    python scripts/mcu/sizes.py [--models main resnet18_ec0.05 resnet18_ec0.01] [--json out.json]
    python scripts/mcu/sizes.py --models dscnn mobilenet_v1   # the MLPerf Tiny nets, EC 0.05
    python scripts/mcu/sizes.py --models NAME@ONES@C,H,W   # any registry network and its _fp twin

For each model (closed form at its ones fraction from random weights, as docs/DEPLOY.md makes
them; the main job is ``fmnist_cnn`` at its registry defaults, EC 0.05; ``dscnn`` and
``mobilenet_v1`` are the registry's DS-CNN (1x49x10, 12 classes) and MobileNetV1-0.25 (3x96x96,
2 classes) at EC 0.05; each row also gives the dense-equivalent MACs of one inference):

* **sbnn**: ``sbnn_runtime.lower_c`` (per layer the smallest of gaps, indices, packed bits),
  compiled with ``arm-none-eabi-gcc -Os -flto -mcpu=cortex-m4 -mfpu=fpv4-sp-d16``; flash = text
  (+ rodata) + data of model.o linked with the kernels it calls (``--gc-sections``), RAM = its
  bss (the arena: activations, scratch and decoded offsets);
* **dense 1-bit BNN**: the same network with every binary layer bit-packed (what a dense BNN
  stores: 1 bit per weight), compiled the same way;
* **fp32 float twin**: the registry's ``*_fp`` twin exported through the same generator: for
  the main job compiled; for ResNet-18 (44 MB of weights) its weights and vectors counted by
  the generator plus the code size of the compiled fmnist float twin, and its arena planned;
* **sbnn, int8 float layers**: the same sbnn network with its float layers (stem, shortcuts,
  classifier) in int8 (``sbnn_runtime.quantize``, calibrated on random normal batches), as
  ``sbnn export --int8 --c`` writes it, compiled the same way;
* **int8 float twin**: an estimate, not compiled: the fp32 twin's weight tensors at 1 byte
  each (per-channel vectors stay fp32), the code of the fp32 twin, and int8 activations
  (its arena / 4).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

CPU = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
CFLAGS = ["-std=c99", "-Os", "-flto", "-Wall", "-Wextra", "-Werror", *CPU, "-ffunction-sections",
          "-fdata-sections"]


def arm_size(cm, tmp: Path) -> dict:
    from sbnn_runtime.lower_c import kernel_files

    (tmp / "model.c").write_text(cm.model_c)
    (tmp / "model.h").write_text(cm.model_h)
    for name, data in kernel_files().items():
        (tmp / name).write_bytes(data)
    objs = []
    for src in sorted(tmp.glob("*.c")):
        objs.append(str(src.with_suffix(".o")))
        subprocess.run(["arm-none-eabi-gcc", *CFLAGS, "-c", str(src), "-o", objs[-1]],
                       check=True)
    # the model and the kernels it calls, as they land in flash (libc's memset not counted)
    elf = tmp / "model_only.elf"
    subprocess.run(["arm-none-eabi-gcc", *CPU, "-Os", "-flto", "-nostdlib", "-nostartfiles",
                    "-Wl,--gc-sections", "-Wl,-e,sbnn_run", "-Wl,--unresolved-symbols=ignore-all",
                    *objs, "-o", str(elf)], check=True)
    out = subprocess.run(["arm-none-eabi-size", str(elf)], check=True,
                         capture_output=True, text=True).stdout.splitlines()[1].split()
    text, data, bss = (int(v) for v in out[:3])
    return {"flash": text + data, "ram": bss, "text": text, "data": data, "bss": bss,
            "weight_bytes": cm.const_bytes, "arena_bytes": cm.arena_bytes}


# the MLPerf Tiny networks of the registry: (model, input shape, classes)
TINY = {"dscnn": ("dscnn", (1, 49, 10), 12), "mobilenet_v1": ("mobilenet_v1", (3, 96, 96), 2)}


def make(name: str):
    import sbnn
    from sbnn import models

    torch.manual_seed(0)
    classes = 10
    if "@" in name:  # any registry network: NAME@ONES@C,H,W (e.g. a DS-CNN at 1x49x10)
        arch, ones_text, shape_text = name.split("@")
        shape = tuple(int(v) for v in shape_text.split(","))
        m = models.create(arch, num_classes=classes)
        sbnn.init_closed_form_(m, float(ones_text))
        return m.eval(), models.create(arch + "_fp", num_classes=classes).eval(), shape
    if name == "main":
        arch, ones, shape, kw = "fmnist_cnn", 0.05, (1, 28, 28), {}
    elif name in TINY:
        (arch, shape, classes), ones, kw = TINY[name], 0.05, {}
    else:
        arch, ones, shape, kw = "resnet18_irnet", float(name.split("ec")[1]), (3, 32, 32), {}
    m = models.create(arch, num_classes=classes, **kw)
    sbnn.init_closed_form_(m, ones)
    fp = models.create(arch + "_fp", num_classes=classes, **kw)
    return m.eval(), fp.eval(), shape


def weight_tensor_bytes(graph) -> int:
    """fp32 bytes of the float weight tensors (conv and linear weights), not the vectors."""
    return sum(4 * nd.params["weight"].size for nd in graph.nodes if "weight" in nd.params)


def measure(name: str, code_fp: int | None) -> dict:
    from sbnn.deploy.export import to_graph
    from sbnn_runtime import quantize
    from sbnn_runtime.lower_c import generate_c
    from sbnn_runtime.ops import graph_macs

    model, fp, shape = make(name)
    g, gfp = to_graph(model, shape), to_graph(fp, shape)
    row = {"model": name, "dense_macs": sum(graph_macs(gfp))}
    with tempfile.TemporaryDirectory() as d:
        row["sbnn"] = arm_size(generate_c(g), Path(d))
        row["sbnn"]["layers"] = generate_c(g, values=False).layers
        row["dense_bnn"] = arm_size(generate_c(g, "packed"), Path(d))
        rng = np.random.default_rng(0)
        q = quantize.quantize_graph(g, [rng.standard_normal((8, *shape), dtype=np.float32)
                                        for _ in range(4)])
        row["sbnn_int8"] = arm_size(generate_c(q), Path(d))
        if name == "main" or name in TINY:
            row["fp32"] = arm_size(generate_c(gfp), Path(d))
            row["fp32"]["code"] = row["fp32"]["flash"] - row["fp32"]["weight_bytes"]
        else:
            cm = generate_c(gfp, values=False)
            row["fp32"] = {"flash": cm.const_bytes + code_fp, "ram": cm.arena_bytes,
                           "weight_bytes": cm.const_bytes, "code": code_fp,
                           "arena_bytes": cm.arena_bytes, "counted": True}
    wt = weight_tensor_bytes(gfp)
    row["int8"] = {"flash": row["fp32"]["flash"] - wt + wt // 4,
                   "ram": row["fp32"]["arena_bytes"] // 4, "estimate": True}
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["main", "resnet18_ec0.05", "resnet18_ec0.01"])
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows, code_fp = [], None
    for name in (["main"] if "main" not in a.models else []) + a.models:
        r = measure(name, code_fp)
        if name == "main":
            code_fp = r["fp32"]["code"]
        if name in a.models:
            rows.append(r)
        kb = lambda v: f"{v / 1024:,.1f} KiB"  # noqa: E731
        print(f"{name}: sbnn {kb(r['sbnn']['flash'])} / {kb(r['sbnn']['ram'])}, with int8 "
              f"float layers {kb(r['sbnn_int8']['flash'])} / {kb(r['sbnn_int8']['ram'])} "
              f"({r['sbnn']['flash'] / r['sbnn_int8']['flash']:.2f}x less flash), dense BNN "
              f"{kb(r['dense_bnn']['flash'])} / {kb(r['dense_bnn']['ram'])}, int8 twin (est.) "
              f"{kb(r['int8']['flash'])} / {kb(r['int8']['ram'])}, fp32 twin "
              f"{kb(r['fp32']['flash'])} / {kb(r['fp32']['ram'])}  (flash / RAM); fp32 twin "
              f"flash / sbnn flash = {r['fp32']['flash'] / r['sbnn']['flash']:.1f}x; "
              f"{r['dense_macs'] / 1e6:.2f} M dense-equivalent MACs", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
