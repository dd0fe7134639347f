"""Random valid ``.sbnn`` graphs for the limit checks (tests and scripts/bench_limits.py).

Chains of every op with random geometry (binary convs with sparse, dense and all-ones bits,
real-input ones, float convs, pools, skips), sized so that their parameters, activations and
kernel scratch are megabytes rather than bytes: big enough for peak RSS and run time to show
whether the loader's estimates bound them.
"""

from __future__ import annotations

import numpy as np

from sbnn_runtime.ops import Graph, Node, infer_shapes


def _f(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def random_graph(seed: int, scale: int = 1) -> Graph:
    """A random valid graph; ``scale`` multiplies its channel counts."""
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 17)) * scale
    h, w = int(rng.integers(4, 65)), int(rng.integers(4, 65))
    nodes = [Node("input", [], {"shape": [c, h, w]})]
    shapes = [(c, h, w)]
    for _ in range(int(rng.integers(2, 9))):
        t = len(nodes) - 1
        c, h, w = shapes[t]
        op = rng.choice(["sbconv2d", "sbconv2d", "sbreal", "conv2d", "maxpool", "avgpool",
                         "relu", "add", "hardtanh"])
        if op in ("sbconv2d", "sbreal", "conv2d"):
            k = int(rng.integers(1, 6))
            k = min(k, h + 2 * (k - 1), w + 2 * (k - 1))
            s, p = int(rng.integers(1, 4)), int(rng.integers(0, k))
            if h + 2 * p < k or w + 2 * p < k:
                continue
            co = int(rng.integers(1, 65)) * scale
            if op == "conv2d":
                nd = Node("conv2d", [t], {"stride": s, "padding": p},
                          {"weight": _f(rng, co, c, k, k), "bias": _f(rng, co)})
            else:
                dens = float(rng.choice([0.0, 0.01, 0.05, 0.3, 0.9, 1.0]))
                bits = (rng.random((co, c, k, k)) < dens).astype(np.uint8)
                params = {"bits": bits, "eta": _f(rng, co), "xi": _f(rng, co),
                          "bias": _f(rng, co)}
                nd = Node("sbconv2d", [t], {"stride": s, "padding": p,
                                            "binary_input": op == "sbconv2d"}, params)
        elif op in ("maxpool", "avgpool"):
            k = int(rng.integers(1, 4))
            s, p = int(rng.integers(1, 3)), int(rng.integers(0, k // 2 + 1))
            if h + 2 * p < k or w + 2 * p < k:
                continue
            attrs = {"k": k, "stride": s, "pad": p}
            if op == "avgpool":
                attrs["count_include_pad"] = bool(rng.integers(0, 2))
            nd = Node(str(op), [t], attrs)
        elif op == "add":
            same = [j for j in range(1, t) if shapes[j] == shapes[t]]
            if not same:
                continue
            nd = Node("add", [int(rng.choice(same)), t])
        elif op == "hardtanh":
            nd = Node("hardtanh", [t], {"lo": -1.0, "hi": 1.0})
        else:
            nd = Node("relu", [t])
        nodes.append(nd)
        shapes.append(infer_shapes(Graph(nodes, len(nodes) - 1))[-1])
    t = len(nodes) - 1
    nodes += [Node("global_avgpool", [t]), Node("flatten", [t + 1]),
              Node("linear", [t + 2], params={"weight": _f(rng, 10, shapes[t][0]),
                                              "bias": _f(rng, 10)})]
    g = Graph(nodes, len(nodes) - 1)
    infer_shapes(g)
    return g


def hostile_files() -> dict[str, bytes]:
    """Small files of large cost: all-ones binary weights (free in the file) on tiny maps
    (many partial-group plans), on real input (dequantized floats), and wide kernels."""
    from test_runtime_limits import bconv_file, ones_bits

    return {
        "ones 512x512x3x3 on 4x4, binary input": bconv_file((512, 4, 4),
                                                           ones_bits((512, 512, 3, 3)), pad=1),
        "ones 256x256x3x3 on 2x2, binary input": bconv_file((256, 2, 2),
                                                           ones_bits((256, 256, 3, 3)), pad=1),
        "ones 1024x1024x3x3 on 8x8, real input": bconv_file(
            (1024, 8, 8), ones_bits((1024, 1024, 3, 3)), pad=1, binary=False),
        "ones 64x4096x1x64 on 1x64, binary input": bconv_file((4096, 1, 64),
                                                             ones_bits((64, 4096, 1, 64))),
    }
