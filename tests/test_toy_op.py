"""Adding an op is one entry in the op table plus its kernels: a toy op registered in one place
(its shape rule, numpy reference, ONNX lowering, C lowering and C kernel text) runs through the
numpy reference, the C export and ONNX, with no other edit."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from sbnn_runtime.lower_c import export_c
from sbnn_runtime.ops import OPS, Graph, Node, OpSpec, reference_forward

CC = shutil.which("gcc") or shutil.which("clang")

# -- the one place: an op-table entry and its C kernel ----------------------------------------

TOY_C = r"""
/* toy_softsign: y = x / (1 + |x|) */
static void toy_softsign(const float *x, float *y, int n)
{
    int i;
    for (i = 0; i < n; ++i)
        y[i] = x[i] / (1.0f + (x[i] < 0.0f ? -x[i] : x[i]));
}
"""

TOY = OpSpec(
    "toy_softsign", 1, {}, {},
    shape=lambda nd, ins, where: ins[0],
    reference=lambda nd, x: (x[0] / (np.float32(1) + np.abs(x[0]))).astype(np.float32),
    lower_native=None,  # no native-engine kernel: the engine refuses it, the others do not
    lower_onnx=lambda ctx, nd, ins, out: ctx.node("Softsign", ins, [out]),
    macs=lambda nd, ins, out: int(np.prod(out)),
    c_inplace=True,
    lower_c=lambda cn: f"toy_softsign({cn.x[0]}, {cn.y}, {int(np.prod(cn.out))});",
    c_source=TOY_C,
)


@pytest.fixture
def toy_op():
    OPS[TOY.name] = TOY
    yield TOY
    del OPS[TOY.name]


def toy_graph(rng) -> Graph:
    nodes = [Node("input", [], {"shape": [2, 5, 4]}),
             Node("conv2d", [0], {"stride": 1, "padding": 1},
                  {"weight": rng.standard_normal((3, 2, 3, 3)).astype(np.float32)}),
             Node("toy_softsign", [1], name="soft"), Node("relu", [2]),
             Node("toy_softsign", [3], name="soft2"), Node("global_avgpool", [4]),
             Node("flatten", [5])]
    return Graph(nodes, 6)


MAIN = r"""
#include <stdio.h>
#include "toy.h"
int main(int argc, char **argv)
{
    static float x[TOY_INPUT_SIZE], y[TOY_OUTPUT_SIZE];
    FILE *f = fopen(argv[1], "rb");
    if (argc != 3 || !f || fread(x, sizeof x, 1, f) != 1 || toy_run(x, y) != 0)
        return 1;
    fclose(f);
    f = fopen(argv[2], "wb");
    return !f || fwrite(y, sizeof y, 1, f) != 1 || fclose(f);
}
"""


def test_toy_op_runs_through_reference_c_and_onnx(toy_op, tmp_path):
    rng = np.random.default_rng(0)
    graph = toy_graph(rng)
    x = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    want = reference_forward(graph, x)
    # the reference is the op's own formula
    assert np.all(np.abs(want) < 1) and want.shape == (1, 3)

    # C: the model file carries the kernel text once, the call comes from the entry
    if CC is None:
        pytest.skip("no C compiler")
    cm = export_c(graph, tmp_path, name="toy")
    assert cm.model_c.count("static void toy_softsign(") == 1
    assert cm.model_c.count("toy_softsign((") == 2
    (tmp_path / "main.c").write_text(MAIN)
    srcs = [str(p) for p in sorted(tmp_path.glob("*.c")) if p.name != "main.c"]
    for src in srcs:
        subprocess.run([CC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-c",
                        src, "-o", src[:-2] + ".o"], check=True, capture_output=True, text=True)
    exe = tmp_path / "toy"
    subprocess.run([CC, "-std=c99", "-O1", "-I", str(tmp_path), str(tmp_path / "main.c"),
                    *(s[:-2] + ".o" for s in srcs), "-lm", "-o", str(exe)], check=True)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    subprocess.run([str(exe), str(tmp_path / "x.bin"), str(tmp_path / "y.bin")], check=True)
    got_c = np.fromfile(tmp_path / "y.bin", np.float32).reshape(want.shape)
    np.testing.assert_allclose(got_c, want, rtol=1e-5, atol=1e-6)

    # ONNX: the entry's lowering, run by onnxruntime
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from sbnn_runtime.lower_onnx import to_onnx

    model = to_onnx(graph)
    assert [n.op_type for n in model.graph.node].count("Softsign") == 2
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got_onnx = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(got_onnx, want, rtol=1e-5, atol=1e-6)
