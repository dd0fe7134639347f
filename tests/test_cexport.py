"""The C99 export (sbnn_runtime.lower_c) compiled with the host's C compilers gives the engine's
outputs: registry models, a user-built model, every op, both weight formats, odd shapes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sbnn
from sbnn import models
from sbnn.deploy.export import to_graph
from sbnn_runtime.engine import Engine
from sbnn_runtime.lower_c import CExportError, export_c, generate_c
from sbnn_runtime.ops import Graph, Node, reference_forward
from test_export import randomize_, safe_inputs, sparsify_

# the engine is held to 1e-4 against PyTorch (tests/test_export.py); the C model to the engine
RTOL = 1e-5
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wshadow",
          "-Wdouble-promotion", "-O2"]
COMPILERS = [c for c in ("gcc", "clang") if shutil.which(c)]

MAIN_C = r"""
#include <stdio.h>
#include "model.h"
/* usage: run IN OUT N: N images of SBNN_INPUT_SIZE float32 -> N outputs */
int main(int argc, char **argv)
{
    static float x[SBNN_INPUT_SIZE], y[SBNN_OUTPUT_SIZE];
    FILE *fi, *fo;
    long n, i;
    if (argc != 4)
        return 2;
    fi = fopen(argv[1], "rb");
    fo = fopen(argv[2], "wb");
    n = atol(argv[3]);
    if (!fi || !fo)
        return 3;
    if (sbnn_run(NULL, y) != -1)
        return 4;
    for (i = 0; i < n; ++i) {
        if (fread(x, sizeof(float), SBNN_INPUT_SIZE, fi) != SBNN_INPUT_SIZE)
            return 5;
        if (sbnn_run(x, y) != 0)
            return 6;
        if (fwrite(y, sizeof(float), SBNN_OUTPUT_SIZE, fo) != SBNN_OUTPUT_SIZE)
            return 7;
    }
    fclose(fi);
    return fclose(fo) ? 8 : 0;
}
""".replace("#include <stdio.h>", "#include <stdio.h>\n#include <stdlib.h>")

pytestmark = pytest.mark.skipif(not COMPILERS, reason="no C compiler (gcc/clang) on PATH")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def compile_objects(folder: Path, cc: str, extra: tuple[str, ...] = (),
                    sources=None) -> list[str]:
    """Every C file of an export (the model and the kernels) alone under the strict flags."""
    objs = []
    for src in sources or sorted(folder.glob("*.c")):
        if src.name == "main.c":
            continue
        obj = folder / f"{src.stem}_{cc}.o"
        subprocess.run([cc, *CFLAGS, *extra, "-c", str(src), "-o", str(obj)], check=True,
                       capture_output=True, text=True)
        objs.append(str(obj))
    return objs


def build(folder: Path, cc: str, extra: tuple[str, ...] = ()) -> Path:
    (folder / "main.c").write_text(MAIN_C)
    exe = folder / f"run_{cc}"
    objs = compile_objects(folder, cc, extra)  # the test main may use stdio
    subprocess.run([cc, "-std=c99", "-O2", *extra, "-I", str(folder), str(folder / "main.c"),
                    *objs, "-lm", "-o", str(exe)], check=True, capture_output=True, text=True)
    return exe


def run_c(graph: Graph, x: np.ndarray, folder: Path, binary_format: str = "auto",
          extra: tuple[str, ...] = (), compilers=None) -> dict[str, np.ndarray]:
    """Export, compile with every compiler, run on ``x`` (N, C, H, W); outputs per compiler."""
    folder.mkdir(parents=True, exist_ok=True)
    cm = export_c(graph, folder, binary_format)
    x = np.ascontiguousarray(x, np.float32)
    assert cm.input_size == x[0].size
    (folder / "in.bin").write_bytes(x.tobytes())
    outs = {}
    for cc in compilers or COMPILERS:
        try:
            exe = build(folder, cc, extra)
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"{cc} failed on the generated code:\n{exc.stderr[:4000]}")
        subprocess.run([str(exe), str(folder / "in.bin"), str(folder / "out.bin"),
                        str(len(x))], check=True, timeout=300)
        outs[cc] = np.fromfile(folder / "out.bin", np.float32).reshape(len(x), -1)
    return outs


def rel_err(got, want) -> float:
    got, want = np.asarray(got).reshape(len(want), -1), np.asarray(want).reshape(len(want), -1)
    return float((np.abs(got - want).max(1) / np.abs(want).max(1).clip(1e-12)).max())


def check_against_engine(graph: Graph, x: np.ndarray, folder: Path, rtol: float = RTOL,
                         formats=("auto",)) -> None:
    want = Engine(graph, num_threads=1)(x)
    want = want.reshape(len(x), -1)
    for fmt in formats:
        for cc, got in run_c(graph, x, folder / fmt, fmt).items():
            assert rel_err(got, want) < rtol, (cc, fmt, rel_err(got, want))
            np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


def prepared(model: nn.Module, shape, ones=0.05, n=3):
    if ones is not None:
        sparsify_(model, ones)
    randomize_(model, shape=shape)
    x = safe_inputs(model, shape, n=n)
    return to_graph(model.eval(), shape), x


@pytest.mark.parametrize("name,width,shape", [
    ("fmnist_cnn", 16, (1, 28, 28)),
    ("resnet18_irnet", 8, (3, 8, 8)),
    ("reactnet18", 8, (3, 16, 16)),  # max-pools after the stem: 16 -> 8/4/2/1
    ("fmnist_cnn_fp", 16, (1, 28, 28)),  # no binary layer at all
])
def test_registry_models(name, width, shape, tmp_path):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, width=width)
    binary = any(isinstance(m, sbnn.SBLayer) for m in model.modules())
    graph, x = prepared(model, shape, ones=0.05 if binary else None)
    check_against_engine(graph, x.numpy(), tmp_path, formats=("auto", "packed"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fmnist_cnn", "resnet18_irnet", "reactnet18"])
def test_registry_models_full_width(name, tmp_path):
    torch.manual_seed(0)
    # CIFAR nets at 8x8, as tests/test_export.py runs them: every channel count, all strides
    shape = (1, 28, 28) if name.startswith("fmnist") else \
        (3, 16, 16) if name == "reactnet18" else (3, 8, 8)  # reactnet max-pools after its stem
    graph, x = prepared(models.create(name, num_classes=10), shape, n=2)
    check_against_engine(graph, x.numpy(), tmp_path)


def test_user_model_against_pytorch(tmp_path):
    # what a user writes: a plain torch model, binarised in place, exported
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardtanh(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.Hardtanh(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 7))
    sbnn.binarize_(model)
    assert len(sbnn.sb_layers(model)) == 2
    shape = (1, 15, 15)
    graph, x = prepared(model, shape, ones=0.1, n=4)
    check_against_engine(graph, x.numpy(), tmp_path, formats=("sparse", "packed"))
    with torch.no_grad():
        want = model(x).numpy()
    for got in run_c(graph, x.numpy(), tmp_path / "pt").values():
        assert rel_err(got, want) < 1e-4
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


def _chan(c, lo, hi, rng):
    return rng.uniform(lo, hi, c).astype(np.float32)


def op_graph(rng: np.random.Generator, ones: float = 0.2) -> Graph:
    """Every op, odd sizes, stride 2, padding, thresholds, a real-input binary conv, an
    all-zero output channel, residual adds, flat affine, linear without bias."""
    def bits(co, ci, k):
        b = (rng.random((co, ci, k, k)) < ones).astype(np.uint8)
        b[0] = 0  # an all-zero filter
        return b

    def sb(i, co, ci, k, s, p, binary, thr=True):
        prm = {"bits": bits(co, ci, k), "eta": _chan(co, 0.5, 1.5, rng),
               "xi": _chan(co, -0.3, 0.3, rng), "bias": _chan(co, -1, 1, rng)}
        if thr and binary:
            prm["thr"] = _chan(ci, -0.2, 0.2, rng)
        return Node("sbconv2d", [i], {"stride": s, "padding": p, "binary_input": binary}, prm,
                    f"sb{len(nodes)}")

    nodes = [Node("input", [], {"shape": [3, 11, 9]}, name="input")]
    w0 = rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3
    nodes.append(Node("conv2d", [0], {"stride": 1, "padding": 1},
                      {"weight": w0, "bias": _chan(6, -0.1, 0.1, rng)}, "conv"))       # 1
    nodes.append(Node("affine", [1], {}, {"scale": _chan(6, 0.5, 2, rng),
                                          "shift": _chan(6, -0.2, 0.2, rng)}, "bn"))     # 2
    nodes.append(sb(2, 6, 6, 3, 1, 1, True))                                             # 3
    nodes.append(Node("add", [3, 2], name="res"))                                        # 4
    nodes.append(Node("rprelu", [4], {}, {"shift_in": _chan(6, -.2, .2, rng),
                                          "slope": _chan(6, 0, .5, rng),
                                          "shift_out": _chan(6, -.2, .2, rng)}, "rp"))   # 5
    nodes.append(sb(5, 10, 6, 3, 2, 1, True, thr=False))                                 # 6
    nodes.append(Node("hardtanh", [6], {"lo": -1.0, "hi": 1.0}, name="ht"))              # 7
    nodes.append(sb(7, 10, 10, 1, 1, 0, False))                                          # 8
    nodes.append(Node("relu", [8], name="relu"))                                         # 9
    nodes.append(Node("maxpool", [9], {"k": 3, "stride": 1, "pad": 1}, name="mp"))       # 10
    nodes.append(Node("avgpool", [10], {"k": 3, "stride": 2, "pad": 1,
                                        "count_include_pad": False}, name="ap"))         # 11
    nodes.append(Node("avgpool", [7], {"k": 2, "stride": 2, "pad": 1,
                                       "count_include_pad": True}, name="ap2"))          # 12
    nodes.append(sb(12, 10, 10, 2, 1, 0, True))                                          # 13
    nodes.append(Node("global_avgpool", [13], name="gap"))                               # 14
    nodes.append(Node("flatten", [11], name="fl"))                                       # 15
    nodes.append(Node("affine", [15], {}, {"scale": _chan(90, .5, 2, rng),
                                           "shift": _chan(90, -.2, .2, rng)}, "bn1d"))   # 16
    nodes.append(Node("linear", [16], {}, {"weight": rng.standard_normal((5, 90))
                                           .astype(np.float32)}, "fc"))                  # 17
    nodes.append(Node("flatten", [14], name="fl2"))                                      # 18
    nodes.append(Node("linear", [18], {}, {"weight": rng.standard_normal((5, 10)).astype(
        np.float32), "bias": _chan(5, -1, 1, rng)}, "fc2"))                              # 19
    nodes.append(Node("add", [17, 19], name="out"))                                      # 20
    return Graph(nodes, 20)


def far_inputs(graph: Graph, rng, n: int = 3, tries: int = 40) -> np.ndarray:
    """Inputs whose values at every binarisation lie clearly off its threshold (float rounding
    of a conv may otherwise flip one sign, correctly, and a whole output with it)."""
    shape = graph.input_shape
    keep = []
    for _ in range(tries):
        x = rng.standard_normal((1, *shape)).astype(np.float32)
        vals = [x]
        for nd in graph.nodes[1:]:
            from sbnn_runtime.ops import OPS
            vals.append(OPS[nd.op].reference(nd, [vals[j] for j in nd.inputs]))
        ok = True
        for nd in graph.nodes:
            if nd.op == "sbconv2d" and nd.attrs["binary_input"]:
                v = vals[nd.inputs[0]]
                thr = nd.params.get("thr", np.zeros(v.shape[1], np.float32))
                ok &= float(np.abs(v - thr[None, :, None, None]).min()) > 1e-4
        if ok:
            keep.append(x[0])
        if len(keep) == n:
            return np.stack(keep)
    pytest.fail("no inputs far enough from the thresholds")


@pytest.mark.parametrize("seed", [0, 1])
def test_every_op_both_formats(seed, tmp_path):
    rng = np.random.default_rng(seed)
    graph = op_graph(rng)
    x = far_inputs(graph, rng)
    want = reference_forward(graph, x)
    check_against_engine(graph, x, tmp_path, formats=("sparse", "packed", "auto"))
    for got in run_c(graph, x, tmp_path / "ref").values():
        assert rel_err(got, want) < RTOL


def test_conv_pool_fusion(tmp_path):
    # every conv kind followed by a pooling (max/avg, padded, both divisors) runs fused
    rng = np.random.default_rng(5)

    def sb(src, co, ci, binary):
        prm = {"bits": (rng.random((co, ci, 3, 3)) < 0.3).astype(np.uint8),
               "eta": _chan(co, 0.5, 1.5, rng), "xi": _chan(co, -0.3, 0.3, rng),
               "bias": _chan(co, -1, 1, rng)}
        if binary:
            prm["thr"] = _chan(ci, -0.2, 0.2, rng)
        return Node("sbconv2d", [src], {"stride": 1, "padding": 1, "binary_input": binary}, prm)

    nodes = [Node("input", [], {"shape": [2, 10, 9]}), sb(0, 5, 2, False),
             Node("avgpool", [1], {"k": 3, "stride": 2, "pad": 1, "count_include_pad": False}),
             sb(2, 6, 5, True), Node("maxpool", [3], {"k": 2, "stride": 1, "pad": 1}),
             Node("conv2d", [4], {"stride": 2, "padding": 0},
                  {"weight": rng.standard_normal((4, 6, 2, 2)).astype(np.float32)}),
             Node("avgpool", [5], {"k": 2, "stride": 1, "pad": 1, "count_include_pad": True})]
    graph = Graph(nodes, 6)
    cm = generate_c(graph)
    assert cm.model_c.count("fused into node") == 3
    assert cm.model_c.count("written as its readers' int8 map") == 1  # the avgpool's output
    x = far_inputs(graph, rng)
    check_against_engine(graph, x, tmp_path, formats=("sparse", "packed"))


def test_int8_conv_folded_into_the_next_binarisation(tmp_path):
    # an int8 conv read only by binary convs compares its int32 sums with one threshold per
    # channel (passes.int8_thresholds): no float scale or bias in the C file, the same bits as
    # the unfused ops, also for values exactly on a threshold; one followed by a pooling keeps
    # its float path
    from sbnn_runtime import qkernels

    rng = np.random.default_rng(13)

    def q(src, co, ci, k, geo, bias=True):
        w, ws = qkernels.quantize_weight(rng.standard_normal((co, ci // geo.get("groups", 1),
                                                              k, k)).astype(np.float32))
        prm = {"weight": w, "w_scale": ws, **({"bias": _chan(co, -.5, .5, rng)} if bias else {})}
        return Node("qconv2d", [src], {"stride": 1, "padding": k // 2, "x_scale": 0.02,
                                       "x_zero": 128, **geo}, prm)

    def sb(src, co, ci, k, thr):
        prm = {"bits": (rng.random((co, ci, k, k)) < 0.3).astype(np.uint8),
               "eta": _chan(co, .5, 1.5, rng), "xi": _chan(co, -.3, .3, rng),
               "bias": _chan(co, -1, 1, rng), **({"thr": thr} if thr is not None else {})}
        return Node("sbconv2d", [src], {"stride": 1, "padding": k // 2, "binary_input": True},
                    prm)

    nodes = [Node("input", [], {"shape": [4, 9, 7]}),
             q(0, 4, 4, 3, {"groups": 4}),                             # 1 depthwise, folded
             sb(1, 6, 4, 3, _chan(4, -.2, .2, rng)),                   # 2 reads a padded map
             Node("relu", [2]),                                        # 3
             q(3, 5, 6, 1, {}, bias=False),                            # 4 folded, no bias
             sb(4, 5, 5, 1, None),                                     # 5 1x1, thresholds 0
             q(5, 5, 5, 3, {}),                                        # 6 pooled: float path
             Node("maxpool", [6], {"k": 2, "stride": 2, "pad": 0}),    # 7
             sb(7, 3, 5, 1, None),                                     # 8
             Node("global_avgpool", [8]), Node("flatten", [9])]
    x = rng.standard_normal((3, 4, 9, 7)).astype(np.float32)
    # a threshold of node 2 on a value the depthwise conv gives the first input
    y1 = _op_ref(nodes[1], x)
    nodes[2].params["thr"][1] = y1[0, 1, 4, 3]
    graph = Graph(nodes, 10)
    cm = generate_c(graph)
    assert "L1_ithr" in cm.model_c and "L4_ithr" in cm.model_c and "L6_ithr" not in cm.model_c
    assert "L1_scale" not in cm.model_c and "L4_scale" not in cm.model_c
    assert "L6_scale" in cm.model_c
    want = reference_forward(graph, x)  # a flipped bit moves an output by ~eta, not 1e-5
    assert rel_err(Engine(graph, num_threads=1)(x), want) < RTOL
    for cc, got in run_c(graph, x, tmp_path).items():
        assert rel_err(got, want) < RTOL, cc
    # the fold saves flash: one int32 per channel instead of two floats, and no epilogue
    from sbnn_runtime import passes

    pl = passes.plan(graph, "c")
    assert set(pl.memory.ithr) == {1, 4} and "plane" not in pl.memory.scratch[0]


def _arm_gcc_with_newlib() -> bool:
    if not shutil.which("arm-none-eabi-gcc"):
        return False
    r = subprocess.run(["arm-none-eabi-gcc", "-E", "-x", "c", "-"], input="#include <math.h>\n",
                       capture_output=True, text=True)
    return r.returncode == 0


@pytest.mark.skipif(not _arm_gcc_with_newlib(), reason="no arm-none-eabi-gcc with newlib")
def test_dscnn_int8_needs_half_the_flash_on_cortex_m(tmp_path):
    # issue 19's floor, as scripts/mcu_test.sh checks it: the DS-CNN's C build for a Cortex-M4F
    # (-Os -flto, the model and the kernels it calls) with int8 float layers needs >= 2x less
    # flash than with fp32 ones
    import importlib.util

    from sbnn_runtime import quantize

    path = Path(__file__).resolve().parents[1] / "scripts" / "mcu" / "sizes.py"
    spec = importlib.util.spec_from_file_location("mcu_sizes", path)
    sizes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sizes)
    model, _, shape = sizes.make("dscnn")
    g = to_graph(model, shape)
    rng = np.random.default_rng(0)
    q = quantize.quantize_graph(g, [rng.standard_normal((8, *shape), dtype=np.float32)
                                    for _ in range(4)])
    (tmp_path / "fp").mkdir()
    (tmp_path / "q").mkdir()
    fp = sizes.arm_size(generate_c(g), tmp_path / "fp")
    i8 = sizes.arm_size(generate_c(q), tmp_path / "q")
    assert fp["flash"] >= 2 * i8["flash"], (fp["flash"], i8["flash"])


def _op_ref(nd: Node, x: np.ndarray) -> np.ndarray:
    from sbnn_runtime.ops import OPS

    return OPS[nd.op].reference(nd, [x])


@pytest.mark.parametrize("same_thr", [True, False])
def test_binarised_outputs_with_two_readers(same_thr, tmp_path):
    # a conv read by two binary convs is stored as their int8 map only when they binarise alike
    rng = np.random.default_rng(9)
    thr = _chan(4, -0.2, 0.2, rng)

    def sb(src, t):
        return Node("sbconv2d", [src], {"stride": 1, "padding": 1, "binary_input": True},
                    {"bits": (rng.random((4, 4, 3, 3)) < 0.3).astype(np.uint8),
                     "eta": _chan(4, .5, 1.5, rng), "xi": _chan(4, -.3, .3, rng),
                     "bias": _chan(4, -1, 1, rng), "thr": t})

    nodes = [Node("input", [], {"shape": [2, 7, 6]}),
             Node("conv2d", [0], {"stride": 1, "padding": 1},
                  {"weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32)}),
             sb(1, thr), sb(1, thr if same_thr else thr + np.float32(0.1)),
             Node("add", [2, 3])]
    graph = Graph(nodes, 4)
    cm = generate_c(graph)
    assert cm.model_c.count("written as its readers' int8 map") == int(same_thr)
    x = far_inputs(graph, rng)
    check_against_engine(graph, x, tmp_path)


@pytest.mark.parametrize("kind", ["conv2d", "sbconv_real", "sbconv_bin"])
def test_residual_add_fused(kind, tmp_path):
    # conv(x) + x: the add runs in the conv's epilogue; it may write over x only when the conv
    # no longer reads x (a binary conv binarises x first), so a float conv keeps its own buffer
    rng = np.random.default_rng(11)
    c = 5
    if kind == "conv2d":
        conv = Node("conv2d", [1], {"stride": 1, "padding": 1},
                    {"weight": rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.3})
    else:
        conv = Node("sbconv2d", [1], {"stride": 1, "padding": 1,
                                      "binary_input": kind == "sbconv_bin"},
                    {"bits": (rng.random((c, c, 3, 3)) < 0.3).astype(np.uint8),
                     "eta": _chan(c, .5, 1.5, rng), "xi": _chan(c, -.3, .3, rng),
                     "bias": _chan(c, -1, 1, rng)})
    nodes = [Node("input", [], {"shape": [2, 6, 7]}),
             Node("conv2d", [0], {"stride": 1, "padding": 1},
                  {"weight": rng.standard_normal((c, 2, 3, 3)).astype(np.float32)}),
             conv, Node("add", [2, 1]), Node("relu", [3])]
    graph = Graph(nodes, 4)
    cm = generate_c(graph)
    assert "fused into node 2" in cm.model_c
    call = next(ln for ln in cm.model_c.splitlines() if "&E2)" in ln)
    ptrs = re.findall(r"\(A \+ \d+\)", call)
    y, res = ptrs[1], ptrs[-1]
    assert (y == res) == (kind == "sbconv_bin"), call
    x = far_inputs(graph, rng)
    check_against_engine(graph, x, tmp_path)


def test_gap_encoding_with_long_gaps(tmp_path):
    # 64 x 3 x 3 = 576 taps: gaps beyond 255 need the escape byte, indices need 16 bits
    rng = np.random.default_rng(7)
    co, ci = 5, 64
    bits = np.zeros((co, ci, 3, 3), np.uint8)
    flat = bits.reshape(co, -1)
    flat[0, [0, 1, 300, 575]] = 1      # gaps 0, 0, 298, 274: 1 + 1 + 2 + 2 bytes
    flat[1, 575] = 1                   # gap 575 = 255 + 255 + 65
    flat[2, 255] = 1                   # gap exactly 255: bytes 255, 0
    flat[3, 510] = 1                   # gap 510: 255, 255, 0
    flat[4, 100:140] = 1               # 40 gaps of 0
    nodes = [Node("input", [], {"shape": [ci, 5, 4]}),
             Node("sbconv2d", [0], {"stride": 1, "padding": 1, "binary_input": True},
                  {"bits": bits, "eta": _chan(co, .5, 1.5, rng), "xi": _chan(co, -.3, .3, rng),
                   "bias": _chan(co, -1, 1, rng), "thr": _chan(ci, -.2, .2, rng)})]
    graph = Graph(nodes, 1)
    cm = generate_c(graph)
    assert cm.layers[0]["encoding"] == "gap8"
    assert cm.layers[0]["sparse_bytes"] == (6 + 3 + 2 + 3 + 40) + (co + 1) * 1
    x = far_inputs(graph, rng)
    check_against_engine(graph, x, tmp_path, formats=("sparse", "packed"))


SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g")


@pytest.mark.parametrize("fmt", ["sparse", "packed"])
def test_under_sanitizers(fmt, tmp_path):
    # ASan's redzones around every global catch a kernel reading past a weight array or the
    # arena; UBSan catches overflowing index arithmetic and bad shifts
    def links(cc):
        return subprocess.run([cc, "-fsanitize=address,undefined", "-x", "c", "-", "-o",
                               str(tmp_path / "probe")], input="int main(void){return 0;}",
                              capture_output=True, text=True).returncode == 0

    ccs = [cc for cc in COMPILERS if links(cc)]  # e.g. clang without its sanitizer runtime
    if not ccs:
        pytest.skip("no compiler here has an ASan/UBSan runtime")
    rng = np.random.default_rng(4)
    graph = op_graph(rng)
    x = far_inputs(graph, rng)
    want = Engine(graph, num_threads=1)(x)
    for got in run_c(graph, x, tmp_path / "ops", fmt, SANITIZE, ccs).values():
        assert rel_err(got, want) < RTOL
    # fused pools, int8 maps between binary convs, residual adds over their inputs
    torch.manual_seed(0)
    for name, shape in (("fmnist_cnn", (1, 28, 28)), ("resnet18_irnet", (3, 8, 8))):
        graph, xt = prepared(models.create(name, num_classes=10, width=8), shape, n=1)
        want = Engine(graph, num_threads=1)(xt.numpy())
        for got in run_c(graph, xt.numpy(), tmp_path / name, fmt, SANITIZE, ccs).values():
            assert rel_err(got, want) < RTOL


def test_format_choice_and_sizes():
    rng = np.random.default_rng(0)
    sparse = generate_c(op_graph(rng, ones=0.02))
    dense = generate_c(op_graph(np.random.default_rng(0), ones=0.6))
    big = max(sparse.layers, key=lambda r: r["weights"])
    assert big["format"] == "sparse"
    assert {r["format"] for r in dense.layers} == {"packed"}
    for cm in (sparse, dense):
        for r in cm.layers:
            chosen = r["sparse_bytes"] if r["format"] == "sparse" else r["packed_bytes"]
            assert chosen == min(r["sparse_bytes"], r["packed_bytes"])
    # all-zero kernels cost nothing in the sparse form: bytes = ones * index + starts
    r = sparse.layers[0]
    co = r["shape"][0]
    assert r["sparse_bytes"] == r["ones"] * 1 + (co + 1) * 1  # 54 taps, few ones: 1 byte each
    forced = generate_c(op_graph(np.random.default_rng(0), ones=0.6), "sparse")
    assert {r["format"] for r in forced.layers} == {"sparse"}
    assert forced.const_bytes > dense.const_bytes


def test_arena_reuses_buffers():
    # a chain of same-size element-wise ops works in place: the arena holds two activations
    c, h, w = 4, 6, 6
    rng = np.random.default_rng(0)
    nodes = [Node("input", [], {"shape": [c, h, w]})]
    nodes.append(Node("conv2d", [0], {"stride": 1, "padding": 1},
                      {"weight": rng.standard_normal((c, c, 3, 3)).astype(np.float32)}))
    for _ in range(6):
        nodes.append(Node("relu", [len(nodes) - 1]))
    nodes.append(Node("conv2d", [len(nodes) - 1], {"stride": 1, "padding": 1},
                      {"weight": rng.standard_normal((c, c, 3, 3)).astype(np.float32)}))
    cm = generate_c(Graph(nodes, len(nodes) - 1))
    assert cm.arena_bytes == 4 * (2 * c * h * w)  # two activations (no binary layer: no scratch)


def test_no_libc_and_sizes_in_header(tmp_path):
    torch.manual_seed(0)
    graph, _ = prepared(models.create("fmnist_cnn", width=8), (1, 28, 28))
    cm = export_c(graph, tmp_path)
    src = (tmp_path / "model.c").read_text()
    assert "malloc" not in src and "pthread" not in src
    includes = [ln for ln in src.splitlines() if ln.startswith("#include")]
    assert includes == ["#include <math.h>", "#include <stdint.h>", '#include "sbnn_micro.h"',
                        '#include "model.h"']
    for k in tmp_path.glob("sbnn_*.c"):  # the kernels: their header and nothing else
        assert [ln for ln in k.read_text().splitlines() if ln.startswith("#include")] == [
            '#include "sbnn_micro.h"'], k.name
    hdr = (tmp_path / "model.h").read_text()
    assert "int sbnn_run(const float *input, float *output);" in hdr
    assert "int sbnn_run_arena(const float *input, float *output, void *arena);" in hdr
    assert f"#define SBNN_INPUT_SIZE {28 * 28}" in hdr
    assert "#define SBNN_OUTPUT_SIZE 10" in hdr
    assert f"#define SBNN_ARENA_BYTES {cm.arena_bytes}" in hdr
    assert f"#define SBNN_WEIGHT_BYTES {cm.const_bytes}" in hdr
    # placement hooks for the firmware's linker script
    obj_s = tmp_path / "s.o"
    subprocess.run([COMPILERS[0], *CFLAGS, "-DSBNN_ARENA_ATTR=__attribute__((section(\".myram\")))",
                    "-DSBNN_WEIGHT_ATTR=__attribute__((section(\".myflash\")))", "-c",
                    str(tmp_path / "model.c"), "-o", str(obj_s)], check=True)
    sections = obj_s.read_bytes()
    assert b".myram" in sections and b".myflash" in sections
    # the profiling hook: the firmware's sbnn_profile(node) after each layer
    obj_p = tmp_path / "p.o"
    subprocess.run([COMPILERS[0], *CFLAGS, "-DSBNN_PROFILE", "-c", str(tmp_path / "model.c"),
                    "-o", str(obj_p)], check=True)
    nm = shutil.which("nm")
    if nm:
        assert "sbnn_profile" in subprocess.run([nm, "-u", str(obj_p)], capture_output=True,
                                                text=True, check=True).stdout
    objs = compile_objects(tmp_path, COMPILERS[0], ("-ffreestanding",))
    if nm:
        for obj in objs:
            undef = subprocess.run([nm, "-u", obj], capture_output=True, text=True,
                                   check=True).stdout.split()
            names = set(undef[1::2] if "U" in undef else undef)
            # a compiler may turn a zeroing loop into memset; the rest are the kernels
            assert {n for n in names if not n.startswith("sbnn_")} <= {"memset", "memcpy"}, \
                (obj, names)


def test_tiny_graphs(tmp_path):
    # the identity, and a linear straight on the caller's input (flatten aliases it)
    rng = np.random.default_rng(2)
    ident = Graph([Node("input", [], {"shape": [1, 2, 3]})], 0)
    x = rng.standard_normal((2, 1, 2, 3)).astype(np.float32)
    for got in run_c(ident, x, tmp_path / "id").values():
        np.testing.assert_array_equal(got, x.reshape(2, -1))
    lin = Graph([Node("input", [], {"shape": [1, 2, 3]}), Node("flatten", [0]),
                 Node("linear", [1], {}, {"weight": rng.standard_normal((4, 6)).astype(
                     np.float32)})], 2)
    check_against_engine(lin, x, tmp_path / "lin")


def test_bad_input():
    with pytest.raises(ValueError, match="binary_format"):
        generate_c(op_graph(np.random.default_rng(0)), "dense")
    bad = Graph([Node("input", [], {"shape": [1, 4, 4]}),
                 Node("linear", [0], {}, {"weight": np.zeros((2, 3), np.float32)})], 1)
    with pytest.raises(CExportError, match="node 1"):
        generate_c(bad)


def test_cli_export_c(tmp_path, capsys):
    # sbnn train (tiny) -> sbnn export RUN --c DIR -> compile -> the engine's logits
    from sbnn.cli import main
    from sbnn.pipeline.data import write_synthetic_idx
    from sbnn.pipeline.runs import load_model

    root = write_synthetic_idx(tmp_path / "fmnist", n_train=128, n_test=16)
    run = tmp_path / "run"
    assert main(["train", "--set", f"data.root={root}", "--set", "model.kwargs={width: 8}",
                 "--set", "epochs=1", "--set", "progress=false", "--set", "device=cpu",
                 "--set", "data.batch_size=64", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["export", str(run)]) == 2
    assert "--c DIR" in capsys.readouterr().err
    assert main(["export", str(run), "--c", str(tmp_path / "bad"), "--name", "for"]) == 2
    assert "--name" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    out = tmp_path / "c"
    assert main(["export", str(run), "--c", str(out)]) == 0
    text = capsys.readouterr().out
    assert "format" in text and (out / "model.c").is_file() and (out / "model.h").is_file()
    assert (out / "sbnn_micro.h").is_file()
    graph = to_graph(load_model(run).eval(), (1, 28, 28))
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    want = Engine(graph, num_threads=1)(x)
    assert export_c(graph, tmp_path / "again").model_c == (out / "model.c").read_text()
    for got in run_c(graph, x, tmp_path / "run_c").values():
        assert rel_err(got, want) < 1e-3
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


def test_cexport_shim_warns_and_forwards():
    import importlib
    import sys

    import sbnn_runtime.lower_c as lower_c

    sys.modules.pop("sbnn.deploy.cexport", None)
    with pytest.warns(DeprecationWarning, match="sbnn_runtime.lower_c"):
        shim = importlib.import_module("sbnn.deploy.cexport")
    assert shim.export_c is lower_c.export_c and shim.generate_c is lower_c.generate_c
    assert not hasattr(shim, "format_summary")


def test_both_command_lines_write_the_same_files(tmp_path, capsys):
    # sbnn export MODEL.sbnn --c DIR --name N and python -m sbnn_runtime c MODEL.sbnn DIR
    # --name N: the same bytes, the same report; a .sbnn file exports to --c only
    from sbnn.cli import main
    from sbnn_runtime import fileformat
    from sbnn_runtime.__main__ import main as rt_main

    graph = op_graph(np.random.default_rng(3))
    fileformat.save(graph, tmp_path / "m.sbnn")
    assert main(["export", str(tmp_path / "m.sbnn"), "--c", str(tmp_path / "a"),
                 "--name", "kws"]) == 0
    out_a = capsys.readouterr().out
    assert rt_main(["c", str(tmp_path / "m.sbnn"), str(tmp_path / "b"), "--name", "kws"]) == 0
    out_b = capsys.readouterr().out
    files_a = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    files_b = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    assert files_a == files_b and {"kws.c", "kws.h", "sbnn_micro.h"} <= set(files_a)
    assert out_a.replace(str(tmp_path / "a"), "D") == out_b.replace(str(tmp_path / "b"), "D")
    assert main(["export", str(tmp_path / "m.sbnn"), "-o", str(tmp_path / "x.sbnn")]) == 2
    assert "--c DIR only" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "m.sbnn"), "--c", str(tmp_path / "c"),
                 "--name", "static"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--name" in err and not (tmp_path / "c").exists()
