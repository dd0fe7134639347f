"""The firmware C API of a C export (sbnn_runtime.lower_c), torch-free: two models linked into
one program, two arenas in two threads, the arena checks (NULL, misaligned, guard bytes, ASan),
bad --name values, ops without a C lowering, and ``python -m sbnn_runtime c``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sbnn_runtime import fileformat
from sbnn_runtime.lower_c import CExportError, export_c, generate_c
from sbnn_runtime.ops import OPS, Graph, Node, OpSpec, reference_forward

CC = shutil.which("gcc") or shutil.which("clang")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (gcc/clang) on PATH")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1"]
RTOL = 1e-5


def _chan(rng, c, lo, hi):
    return rng.uniform(lo, hi, c).astype(np.float32)


def kws_graph(rng) -> Graph:
    """conv, affine, a binary conv with a residual add, relu, maxpool, linear."""
    sb = {"bits": (rng.random((6, 6, 3, 3)) < 0.3).astype(np.uint8),
          "eta": _chan(rng, 6, .5, 1.5), "xi": _chan(rng, 6, -.3, .3),
          "bias": _chan(rng, 6, -1, 1), "thr": _chan(rng, 6, -.2, .2)}
    nodes = [Node("input", [], {"shape": [2, 9, 7]}),
             Node("conv2d", [0], {"stride": 1, "padding": 1},
                  {"weight": rng.standard_normal((6, 2, 3, 3)).astype(np.float32)}),
             Node("affine", [1], {}, {"scale": _chan(rng, 6, .5, 2),
                                      "shift": _chan(rng, 6, -.2, .2)}),
             Node("sbconv2d", [2], {"stride": 1, "padding": 1, "binary_input": True}, sb),
             Node("add", [3, 2]), Node("relu", [4]),
             Node("maxpool", [5], {"k": 2, "stride": 2, "pad": 0}), Node("flatten", [6]),
             Node("linear", [7], {}, {"weight": rng.standard_normal((5, 6 * 4 * 3)).astype(
                 np.float32), "bias": _chan(rng, 5, -1, 1)})]
    return Graph(nodes, 8)


def wake_graph(rng) -> Graph:
    """A different model: a real-input binary conv, hardtanh, global pooling, linear."""
    sb = {"bits": (rng.random((4, 1, 3, 3)) < 0.5).astype(np.uint8),
          "eta": _chan(rng, 4, .5, 1.5), "xi": _chan(rng, 4, -.3, .3),
          "bias": _chan(rng, 4, -1, 1)}
    nodes = [Node("input", [], {"shape": [1, 6, 6]}),
             Node("sbconv2d", [0], {"stride": 2, "padding": 1, "binary_input": False}, sb),
             Node("hardtanh", [1], {"lo": -1.0, "hi": 1.0}), Node("global_avgpool", [2]),
             Node("flatten", [3]),
             Node("linear", [4], {}, {"weight": rng.standard_normal((3, 4)).astype(np.float32)})]
    return Graph(nodes, 5)


def far_input(graph: Graph, rng) -> np.ndarray:
    """An input whose values at every binarisation lie clearly off the threshold."""
    for _ in range(50):
        x = rng.standard_normal((1, *graph.input_shape)).astype(np.float32)
        vals = [x]
        ok = True
        for nd in graph.nodes[1:]:
            if nd.op == "sbconv2d" and nd.attrs["binary_input"]:
                v = vals[nd.inputs[0]]
                thr = nd.params.get("thr", np.zeros(v.shape[1], np.float32))
                ok &= float(np.abs(v - thr[None, :, None, None]).min()) > 1e-4
            vals.append(OPS[nd.op].reference(nd, [vals[j] for j in nd.inputs]))
        if ok:
            return x
    pytest.fail("no input far enough from the thresholds")


DRIVER = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kws.h"
#include "wake.h"

#ifdef GUARD_OFF /* under ASan: the arena alone, exactly its size */
#define GUARD 0
#else
#define GUARD 64
#endif
#define RUNS 25

static float x1[KWS_INPUT_SIZE], x2[WAKE_INPUT_SIZE], y1[KWS_OUTPUT_SIZE];
static float y2[WAKE_OUTPUT_SIZE], ya[KWS_OUTPUT_SIZE], yb[KWS_OUTPUT_SIZE];
static unsigned char *ga, *gb; /* arenas with GUARD bytes on either side */

static void *worker(void *arg)
{
    unsigned char *a = arg == (void *)ga ? ga : gb;
    float *y = a == ga ? ya : yb;
    int i;
    for (i = 0; i < RUNS; ++i)
        if (kws_run_arena(x1, y, a + GUARD) != 0)
            return a;
    return 0;
}

static int guards_ok(const unsigned char *g, size_t n)
{
    size_t i;
    for (i = 0; i < GUARD; ++i)
        if (g[i] != 0xA5 || g[GUARD + n + i] != 0xA5)
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    FILE *f;
    pthread_t ta, tb;
    void *ra, *rb;
    float sentinel[KWS_OUTPUT_SIZE];
    if (argc != 4)
        return 2;
    f = fopen(argv[1], "rb");
    if (!f || fread(x1, sizeof x1, 1, f) != 1)
        return 3;
    fclose(f);
    f = fopen(argv[2], "rb");
    if (!f || fread(x2, sizeof x2, 1, f) != 1)
        return 3;
    fclose(f);
    if (kws_run(x1, y1) != 0 || wake_run(x2, y2) != 0)
        return 4;
    ga = malloc(KWS_ARENA_BYTES + 2 * GUARD);
    gb = malloc(KWS_ARENA_BYTES + 2 * GUARD);
    if (!ga || !gb)
        return 5;
    memset(ga, 0xA5, KWS_ARENA_BYTES + 2 * GUARD);
    memset(gb, 0xA5, KWS_ARENA_BYTES + 2 * GUARD);
    /* refused: NULL pointers and a misaligned arena; the output stays as it was */
    memset(sentinel, 0x7F, sizeof sentinel);
    memcpy(ya, sentinel, sizeof ya);
    if (kws_run_arena(x1, ya, 0) != -1 || kws_run_arena(0, ya, ga + GUARD) != -1 ||
        kws_run_arena(x1, 0, ga + GUARD) != -1 || kws_run_arena(x1, ya, ga + GUARD + 1) != -2 ||
        kws_run_arena(x1, ya, ga + GUARD + 2) != -2 || memcmp(ya, sentinel, sizeof ya) != 0 ||
        !guards_ok(ga, KWS_ARENA_BYTES))
        return 6;
    /* two arenas, two threads at once */
    if (pthread_create(&ta, 0, worker, ga) || pthread_create(&tb, 0, worker, gb))
        return 7;
    if (pthread_join(ta, &ra) || pthread_join(tb, &rb) || ra || rb)
        return 8;
    if (!guards_ok(ga, KWS_ARENA_BYTES) || !guards_ok(gb, KWS_ARENA_BYTES))
        return 9;
    f = fopen(argv[3], "wb");
    if (!f || fwrite(y1, sizeof y1, 1, f) != 1 || fwrite(y2, sizeof y2, 1, f) != 1 ||
        fwrite(ya, sizeof ya, 1, f) != 1 || fwrite(yb, sizeof yb, 1, f) != 1)
        return 10;
    free(ga);
    free(gb);
    return fclose(f) ? 11 : 0;
}
"""


def build_two(tmp: Path, da: Path, db: Path, flags=()) -> Path:
    """kws.c from da, wake.c from db, the kernels once (from da), and the driver."""
    objs = []
    for src in [da / "kws.c", db / "wake.c", *sorted(da.glob("sbnn_*.c"))]:
        obj = tmp / f"{src.parent.name}_{src.stem}.o"
        subprocess.run([CC, *STRICT, *flags, "-I", str(src.parent), "-c", str(src), "-o",
                        str(obj)], check=True, capture_output=True, text=True)
        objs.append(str(obj))
    (tmp / "driver.c").write_text(DRIVER)
    exe = tmp / "driver"
    subprocess.run([CC, "-std=c99", "-O1", "-pthread", *flags, "-I", str(da), "-I", str(db),
                    str(tmp / "driver.c"), *objs, "-lm", "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    return exe


def run_two(exe: Path, tmp: Path, x1, x2, n1, n2) -> list[np.ndarray]:
    (tmp / "x1.bin").write_bytes(x1.tobytes())
    (tmp / "x2.bin").write_bytes(x2.tobytes())
    r = subprocess.run([str(exe), str(tmp / "x1.bin"), str(tmp / "x2.bin"),
                        str(tmp / "y.bin")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    y = np.fromfile(tmp / "y.bin", np.float32)
    return np.split(y, np.cumsum([n1, n2, n1]))


def rel(got, want) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    rng = np.random.default_rng(0)
    gk, gw = kws_graph(rng), wake_graph(rng)
    x1, x2 = far_input(gk, rng), far_input(gw, rng)
    d = tmp_path_factory.mktemp("two")
    export_c(gk, d / "a", name="kws")
    export_c(gw, d / "b", name="wake")
    return gk, gw, x1, x2, d


def test_two_models_link_and_two_arenas_run_at_once(two_models):
    gk, gw, x1, x2, d = two_models
    # the kernels are the same bytes beside each model: one copy links both
    ka = {p.name: p.read_bytes() for p in (d / "a").glob("sbnn_*")}
    kb = {p.name: p.read_bytes() for p in (d / "b").glob("sbnn_*")}
    assert ka == kb and "sbnn_micro.h" in ka
    assert sorted(p.name for p in (d / "a").iterdir() if not p.name.startswith("sbnn_")) == \
        ["kws.c", "kws.h"]
    hdr = (d / "a" / "kws.h").read_text()
    for macro in ("KWS_INPUT_SIZE", "KWS_OUTPUT_SIZE", "KWS_ARENA_BYTES", "KWS_ARENA_ALIGN",
                  "KWS_WEIGHT_BYTES"):
        assert f"#define {macro} " in hdr
    assert "int kws_run_arena(const float *input, float *output, void *arena);" in hdr
    # the model file has no writable static but the plain entry point's arena
    src = (d / "a" / "kws.c").read_text()
    statics = [ln for ln in src.splitlines() if ln.lstrip().startswith(("static", "SBNN_"))
               and " static " in f" {ln} " and "const" not in ln]
    assert len(statics) == 1 and "kws_arena[" in statics[0], statics
    tmp = d / "build"
    tmp.mkdir()
    exe = build_two(tmp, d / "a", d / "b")
    y1, y2, ya, yb = run_two(exe, tmp, x1, x2, 5, 3)
    want1, want2 = reference_forward(gk, x1)[0], reference_forward(gw, x2)[0]
    assert rel(y1, want1) < RTOL and rel(y2, want2) < RTOL
    np.testing.assert_array_equal(ya, y1)  # the caller's arenas, in two threads
    np.testing.assert_array_equal(yb, y1)


def test_arena_under_asan(two_models):
    # an arena of exactly KWS_ARENA_BYTES from malloc: ASan stops any access past it
    gk, gw, x1, x2, d = two_models
    probe = subprocess.run([CC, "-fsanitize=address,undefined", "-x", "c", "-", "-o",
                            str(d / "probe")], input="int main(void){return 0;}",
                           capture_output=True, text=True)
    if probe.returncode:
        pytest.skip("no ASan/UBSan runtime here")
    tmp = d / "asan"
    tmp.mkdir()
    flags = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g",
             "-DGUARD_OFF")
    exe = build_two(tmp, d / "a", d / "b", flags)
    y1, y2, ya, _ = run_two(exe, tmp, x1, x2, 5, 3)
    assert rel(y1, reference_forward(gk, x1)[0]) < RTOL
    np.testing.assert_array_equal(ya, y1)


@pytest.mark.parametrize("name", ["1kws", "int", "while", "kws-net", "kws;", "", "k w",
                                  "sbnn_micro", "main", "a" * 40, "ké"])
def test_bad_names_are_refused_and_write_nothing(name, tmp_path):
    g = wake_graph(np.random.default_rng(1))
    fileformat.save(g, tmp_path / "m.sbnn")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "sbnn_runtime", "c", str(tmp_path / "m.sbnn"),
                        str(out), "--name", name], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "--name" in r.stderr
    assert not out.exists()
    with pytest.raises(CExportError, match="--name"):
        generate_c(g, name=name)


def test_cli_writes_the_api_and_a_readable_report(tmp_path):
    g = kws_graph(np.random.default_rng(2))
    fileformat.save(g, tmp_path / "m.sbnn")
    r = subprocess.run([sys.executable, "-m", "sbnn_runtime", "c", str(tmp_path / "m.sbnn"),
                        str(tmp_path / "c"), "--name", "kws"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "sbconv2d" in r.stdout and "MACs per image" in r.stdout  # the graph summary
    assert "arena" in r.stdout and "weights" in r.stdout  # the C sizes
    assert (tmp_path / "c" / "kws.c").is_file() and (tmp_path / "c" / "kws.h").is_file()
    again = export_c(fileformat.load(tmp_path / "m.sbnn"), tmp_path / "d", name="kws")
    assert (tmp_path / "c" / "kws.c").read_text() == again.model_c
    bad = subprocess.run([sys.executable, "-m", "sbnn_runtime", "c", str(tmp_path / "nope.sbnn"),
                          str(tmp_path / "e")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    # without --name: today's names, plus sbnn_run_arena
    cm = generate_c(g)
    assert cm.stem == "model" and "int sbnn_run(const float *input" in cm.model_h
    assert "int sbnn_run_arena(" in cm.model_h and "#define SBNN_ARENA_BYTES" in cm.model_h


def test_runtime_c_export_imports_no_torch(tmp_path):
    g = wake_graph(np.random.default_rng(3))
    fileformat.save(g, tmp_path / "m.sbnn")
    code = ("import sys, runpy; sys.argv = ['x', 'c', sys.argv[1], sys.argv[2]]\n"
            "try:\n    runpy.run_module('sbnn_runtime', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.sbnn"), str(tmp_path / "c")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_op_without_c_lowering_is_refused_naming_it(tmp_path):
    spec = OpSpec("toy_noc", 1, {}, {}, shape=lambda nd, ins, where: ins[0],
                  reference=lambda nd, x: x[0], lower_native=None, lower_onnx=None)
    OPS[spec.name] = spec
    try:
        g = Graph([Node("input", [], {"shape": [1, 2, 2]}), Node("relu", [0], name="r"),
                   Node("toy_noc", [1], name="mystery")], 2)
        with pytest.raises(CExportError,
                           match=r"(?i)node 2 \(toy_noc 'mystery'\).*no c lowering"):
            export_c(g, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    finally:
        del OPS[spec.name]
