"""What the native kernels really do and allocate, from shapes alone: the loader's limits.

The C++ kernels (``runtime/csrc/core``) lay their work out in ways a multiply-accumulate count
does not see: the sparse binary conv accumulates every 1-bit over a whole grid row span
(``Lr`` bytes, padding columns included), both binary kernels are built for every sparse conv
(the engine picks the faster one at the first run), and both keep their own copies of the bits.
This module is the Python twin of that layout (:func:`bconv_geometry` mirrors
``sbnn::make_geom`` field for field; a test checks them against each other on every small
geometry), so that :func:`sbnn_runtime.ops.graph_cost` can bound work and memory before a
single parameter is decoded.

Work is counted in *kernel steps*: one byte lane of the sparse accumulation, one float
multiply-accumulate, one element of a pass over a tensor. The dense binary kernel's loop trips
are dearer than that, so each counts several steps (``DENSE_*_STEPS``: a 64-bit word of its
GEMM 4, a scalar packing or im2col trip 16, an output's reduction and epilogue 32, an output
channel's call 256), and so does each 1-bit's offset the sparse kernel writes into the plan of
a partial group at the first run of a batch size (``PLAN_ONE_STEPS``). The weights were set by
timing both binary kernels on the layers of 200 random graphs (the dense kernel ran at 6.5x
the sparse kernel's median time per step unweighted, at 0.7x to 1.9x weighted), so that the
steps of every kernel run at rates within a small factor of each other; ``python
scripts/bench_limits.py time`` checks that on random graphs (docs/HARDENING.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAX_BCONV_CHANNELS",
    "MAX_BCONV_CLASSES",
    "INT32_MAX",
    "BConvGeometry",
    "bconv_geometry",
    "bconv_limit_error",
    "border_classes",
    "sparse_steps",
    "dense_steps",
    "tiny_steps",
    "plan_steps",
    "DENSE_WORD_STEPS",
    "DENSE_SCALAR_STEPS",
    "DENSE_OUTPUT_STEPS",
    "DENSE_CHANNEL_STEPS",
    "PLAN_ONE_STEPS",
    "bconv_param_bytes",
    "bconv_workspace",
    "tiny_param_bytes",
    "tiny_workspace",
    "fconv_param_bytes",
    "fconv_workspace",
    "fconv_steps",
]

MAX_BCONV_CHANNELS = 32767  # sbnn::make_geom: int16 channel sums
MAX_BCONV_CLASSES = 65536  # sbnn::BConvLayer: uint16 border-class ids of the dense kernel
INT32_MAX = (1 << 31) - 1  # sbnn::make_geom: int32 offsets into the bit planes
_GRID_BYTES = 8 * 32  # one register tile of the sparse kernel
_GEMM_MR, _GEMM_VL = 12, 16  # the widest float GEMM tile (AVX-512); bounds the others
# What one loop trip of the dense binary kernel costs in kernel steps (timed against the sparse
# kernel's steps, see the module docstring): a 64-bit word of the GEMM (AVX2 counts bits
# through a nibble table, 4 words a vector), a scalar trip of packing the input into bit words
# or of im2col (a word and its popcount), an output's reduction to one count plus its epilogue
# (the border class lookup), and an output channel's calls (the GEMM's edge tiles, the epilogue).
# A cleared byte counts 1 step, as in the sparse kernel.
DENSE_WORD_STEPS = 4
DENSE_SCALAR_STEPS = 16
DENSE_OUTPUT_STEPS = 32
DENSE_CHANNEL_STEPS = 256
# A 1-bit's offset written into a fresh plan (``remap_plan`` in bconv.cpp: a division and a
# store into new pages, about 2 ns with the page faults), when the first run of a batch size
# smaller than the kernel's group makes the plan for that group size.
PLAN_ONE_STEPS = 32


@dataclass(frozen=True)
class BConvGeometry:
    """``sbnn::ConvGeom``: see ``runtime/csrc/core/bconv.h``."""

    Ci: int
    H: int
    W: int
    kh: int
    kw: int
    stride: int
    pad: int
    Hp: int
    Wp: int
    Ho: int
    Wo: int
    Hs: int
    Wph: int
    G: int
    Hph: int
    L: int
    Lr: int
    phase_size: int
    plane_elems: int
    plane_alloc: int
    ssum_alloc: int
    Cw: int
    K: int
    Kp: int
    prep_work_bytes: int
    wrap: int


def bconv_geometry(Ci: int, H: int, W: int, kh: int, kw: int, stride: int, pad: int,
                   vec_bytes: int = 32, max_group: int = 64) -> BConvGeometry:
    """The twin of ``sbnn::make_geom`` (no checks: see :func:`bconv_limit_error`)."""
    s = stride
    Hp, Wp = H + 2 * pad, W + 2 * pad
    Ho, Wo = (Hp - kh) // s + 1, (Wp - kw) // s + 1
    Hs = (Hp + s - 1) // s * s
    Wph = (Wp + s - 1) // s
    if s == 1 and 1 <= pad <= kw - 1:
        Wph = W + pad
    rows_img, gmax = Hs // s, max(1, min(64, max_group))

    def groups(row_bytes: int) -> int:
        G = 1
        while G < gmax and (G * rows_img + Ho) * row_bytes <= _GRID_BYTES:
            G += 1
        return G

    def vecs(G: int, pitch: int) -> int:
        return (((G - 1) * rows_img + Ho) * pitch + 31) // 32

    G, wrap = groups(Wph), 0
    if s == 1 and pad >= 1 and 2 * pad <= kw - 1:  # wrapped rows (ConvGeom::wrap)
        Gw = groups(W)
        if 8 * Gw * vecs(G, Wph) > 9 * G * vecs(Gw, W):
            Wph, G, wrap = W, Gw, 1
    Hph = G * rows_img
    L = ((G - 1) * rows_img + Ho) * Wph
    Lr = (L + 63) // 64 * 64
    phase_size = Hph * Wph
    plane_elems = Ci * s * s * phase_size
    Cw = (Ci + 63) // 64
    K = kh * kw * Cw
    unit = vec_bytes // 8
    return BConvGeometry(
        Ci, H, W, kh, kw, s, pad, Hp, Wp, Ho, Wo, Hs, Wph, G, Hph, L, Lr, phase_size,
        plane_elems, plane_elems + Lr + 256 + 64, s * s * phase_size + Lr + 256 + 64, Cw, K,
        (K + unit - 1) // unit * unit, H * W + 64, wrap)


def _mask_kinds(n_out: int, k: int, s: int, p: int, n: int) -> int:
    """Distinct masks of in-image taps over the outputs of one axis (the dense border classes).

    The mask of output ``o`` is the run of taps ``d`` with ``0 <= o*s + d - p < n``: it is fixed
    by its (first, last) valid tap, so count the distinct pairs (at most ``n_out``).
    """
    a = np.arange(n_out, dtype=np.int64) * s - p
    first, last = np.maximum(0, -a), np.minimum(k, n - a)
    return int(np.unique(first * (k + 1) + last).size)


def border_classes(g: BConvGeometry) -> int:
    """``nclass_`` of the dense binary kernel: pixel classes by which taps fall in the image."""
    return (_mask_kinds(g.Ho, g.kh, g.stride, g.pad, g.H)
            * _mask_kinds(g.Wo, g.kw, g.stride, g.pad, g.W))


def bconv_limit_error(Ci: int, H: int, W: int, kh: int, kw: int, stride: int,
                      pad: int) -> str | None:
    """Why the native binary-input conv cannot take this geometry, or None.

    Every ``std::invalid_argument`` of ``sbnn::make_geom`` and ``sbnn::BConvLayer`` that a
    graph passing :func:`sbnn_runtime.ops.infer_shapes` could still reach.
    """
    if Ci > MAX_BCONV_CHANNELS:
        return f"{Ci} input channels, the binary conv takes at most {MAX_BCONV_CHANNELS}"
    g = bconv_geometry(Ci, H, W, kh, kw, stride, pad, 64)
    if max(g.plane_alloc, g.ssum_alloc, g.L + 64, g.Ho * g.Wph + g.Lr) > INT32_MAX:
        return (f"its bit planes ({g.plane_alloc} bytes) exceed the binary conv's 32-bit "
                "offsets")
    if border_classes(g) > MAX_BCONV_CLASSES:
        return f"more than {MAX_BCONV_CLASSES} border classes (a kernel far wider than its input)"
    return None


def _groups(N: int, G_full: int, T: int) -> tuple[int, list[int]]:
    """``sbnn::BConvLayer::run`` (sparse) at batch N with T threads: the group size its plan is
    made for, and the images of each group (the last may be partial)."""
    G = max(1, min(G_full, N))
    ngroups = (N + G - 1) // G
    if T > 1 and ngroups >= T:
        ngroups = (ngroups + T - 1) // T * T
        G = (N + ngroups - 1) // ngroups
        ngroups = (N + G - 1) // G
    return G, [min(G, N - k * G) for k in range(ngroups)]


def sparse_steps(g: BConvGeometry, Co: int, ones: int, N: int = 1, T: int = 1) -> int:
    """Kernel steps of the sparse binary conv on N images (``BConvLayer::group_sparse``).

    Per group of ``nimg`` images: the prep clears the planes and channel sums and binarises
    the input; the window sum adds ``kh*kw`` rows of ``Lr``; every output channel clears or
    widens its accumulator row, every 1-bit adds a row of ``Lr`` bytes, and the epilogue runs
    over ``nimg * Ho * Wo`` pixels per channel.
    """
    P, total = g.Ho * g.Wo, 0
    G, sizes = _groups(N, g.G, T)
    sg = g if G >= g.G else bconv_geometry(g.Ci, g.H, g.W, g.kh, g.kw, g.stride, g.pad, 32, G)
    for nimg in sizes:
        lr = (((nimg - 1) * sg.Hs // sg.stride + sg.Ho) * sg.Wph + 31) // 32 * 32
        total += (sg.plane_alloc + 2 * sg.ssum_alloc + nimg * g.Ci * g.H * g.W
                  + g.kh * g.kw * lr + (Co + ones) * lr + Co * nimg * P)
    return total


def dense_steps(g: BConvGeometry, Co: int, N: int = 1) -> int:
    """Kernel steps of the dense binary conv on N images (``BConvLayer::image_dense``).

    Per image: clearing the padded bit plane (8 bytes a word), packing every input value into
    it and the im2col of ``Kp`` words per output pixel (scalar trips), ``Kp`` GEMM words per
    output, each output's reduction and epilogue, and each output channel's calls; each loop
    trip weighted by its ``DENSE_*_STEPS``.
    """
    P = g.Ho * g.Wo
    return N * (8 * g.Hp * g.Wp * g.Cw + DENSE_SCALAR_STEPS * (g.Ci * g.H * g.W + P * g.Kp)
                + DENSE_WORD_STEPS * Co * P * g.Kp + DENSE_OUTPUT_STEPS * Co * P
                + DENSE_CHANNEL_STEPS * Co)


def plan_steps(g: BConvGeometry, ones: int) -> int:
    """Kernel steps of making a sparse plan at the first run of a batch size (once each).

    A batch smaller than the kernel's group ``G`` (every batch of one, when ``G > 1``) runs a
    plan made for that many images: ``BConvLayer::plan_for`` remaps the full plan's offset of
    every 1-bit and tap into fresh memory. A ``G`` of 1 uses the plan built at load, and costs
    nothing here.
    """
    if g.G <= 1:
        return 0
    return PLAN_ONE_STEPS * (ones + g.kh * g.kw)


def bconv_param_bytes(g: BConvGeometry, Co: int, ones: int) -> int:
    """Bytes the engine holds for one binary-input conv: a sparse and a dense ``BConvLayer``
    (each with its own bits, channel vectors and full offset plan), the dense one's packed
    weights and border tables, and up to ``G - 1`` sparse plans for partial groups."""
    nb = Co * g.Ci * g.kh * g.kw
    per_layer = nb + 12 * Co + 4 * g.Ci + 8 * (Co + 1) + 4 * ones + 4 * g.kh * g.kw
    P = g.Ho * g.Wo
    ncls = border_classes(g)
    dense = 8 * Co * g.Kp + 6 * P + 4 * Co * ncls
    # construction transients of the dense layer: 1-bits per (c, tap), the class map
    dense_tmp = 4 * Co * g.kh * g.kw + ncls * (96 + g.kh + g.kw)
    return 2 * per_layer + dense + dense_tmp + (g.G - 1) * (4 * ones + 4 * g.kh * g.kw)


def bconv_workspace(g: BConvGeometry, Co: int, T: int = 1) -> int:
    """Kernel scratch of one binary conv run with T threads (the larger of the two kernels)."""
    P = g.Ho * g.Wo
    block = 4 * g.Lr + g.Lr + 64
    group = (g.plane_alloc + 2 * g.ssum_alloc + 4 * g.Lr + 4 * g.G * P + g.Lr + 64
             + g.prep_work_bytes + 8)
    sparse = T * (group + block)
    dense = T * (8 * g.Hp * g.Wp * g.Cw + 8 * P * g.Kp + 8 * P + 4 * 16 * P)
    return max(sparse, dense)


# sbnn::BConvTiny (core/bconv_tiny.h): output maps of at most this many pixels, fan-in at most
# TINY_MAX_ROWS rows (its int16 counts)
TINY_MAX_PIXELS = 16
TINY_MAX_ROWS = 32767


def _tiny_fits(g: BConvGeometry) -> bool:
    return g.Ho * g.Wo <= TINY_MAX_PIXELS and g.Ci * g.kh * g.kw <= TINY_MAX_ROWS


def tiny_steps(g: BConvGeometry, Co: int, N: int = 1) -> int:
    """Kernel steps of the tiny-map kernel on N images (``BConvTiny::image``; 0 where it is not
    built): per output pixel and valid tap, every input channel's row of bits in every block of
    256 filters (a vector of carry-save logic, about four dense GEMM words: 16 steps, counted
    for every tap, padded or not: an upper bound), the lists of the +1 inputs, and each
    output's count and epilogue."""
    if not _tiny_fits(g):
        return 0
    P = g.Ho * g.Wo
    rows = P * g.kh * g.kw * g.Ci * ((Co + 255) // 256)
    return N * (4 * DENSE_WORD_STEPS * rows + DENSE_SCALAR_STEPS * g.Ci * g.H * g.W
                + DENSE_OUTPUT_STEPS * Co * P)


def tiny_param_bytes(g: BConvGeometry, Co: int) -> int:
    """Bytes the engine holds for a binary conv's tiny-map kernel, where it is built (0 where
    the geometry does not fit it): the bit-transposed weights (blocks of 256 filters x 32 bytes
    a row, or 512 x 64 on AVX-512, the larger counted), n[co, p], the valid taps, the channel
    vectors, and the per-(filter, tap) 1-bit counts made at construction."""
    if not _tiny_fits(g):
        return 0
    rows = g.Ci * g.kh * g.kw + 1
    cop = (Co + 511) // 512 * 512
    return (cop // 8 * rows + 4 * g.Ho * g.Wo * cop + 8 * g.Ho * g.Wo * g.kh * g.kw
            + 12 * Co + 4 * g.Ci + 4 * Co * g.kh * g.kw)


def tiny_workspace(g: BConvGeometry, Co: int, T: int = 1) -> int:
    """Scratch of the tiny-map kernel with T threads: per image the channel lists of the +1
    inputs, one pixel's rows and the counts (0 where the geometry does not fit it)."""
    if not _tiny_fits(g):
        return 0
    return T * (4 * (g.H * g.W * (g.Ci + 1) + g.Ci * g.kh * g.kw + 16 + Co * g.Ho * g.Wo)
                + 1024)


def fconv_param_bytes(Co: int, K: int) -> int:
    """``sbnn::FloatConv``: the weights, the bias and the weights packed in panels."""
    return 4 * Co * K + 4 * Co + 4 * ((Co + _GEMM_MR - 1) // _GEMM_MR * _GEMM_MR) * K


def fconv_workspace(K: int, P: int, T: int = 1) -> int:
    """``FloatConv::image``: the column panels of one image (im2col), per thread."""
    nr = 2 * _GEMM_VL
    return T * 4 * K * ((P + nr - 1) // nr * nr)


def fconv_steps(Co: int, K: int, P: int, Ci: int, H: int, W: int) -> int:
    """Float conv: its multiply-accumulates plus the im2col pass."""
    return Co * K * P + K * P + Ci * H * W
