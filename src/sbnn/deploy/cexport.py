"""Export a runtime graph as dependency-free C99 for microcontrollers: ``model.c`` + ``model.h``.

    >>> graph = sbnn.deploy.export.to_graph(model.eval(), (1, 28, 28))
    >>> info = sbnn.deploy.cexport.export_c(graph, "out/")   # out/model.c, out/model.h
    >>> print(sbnn.deploy.cexport.format_summary(info))

The generated code runs one image per call::

    int sbnn_run(const float *input, float *output);   /* 0 on success */

with ``input`` of ``SBNN_INPUT_SIZE`` floats (one image, NCHW) and ``output`` of
``SBNN_OUTPUT_SIZE``. Semantics are each op's numpy ``reference`` in :mod:`sbnn_runtime.ops`.

* **Weights** are ``const`` arrays (flash). A binary conv (``sbconv2d``) stores, per layer,
  the smallest of: one-byte *gaps* (the 0-bits before each 1-bit, 255 meaning "255 more"), tap
  *indices* ``ci*kh*kw + ky*kw + kx`` in the narrowest unsigned type (both with a start per
  output channel, so an all-zero kernel costs nothing), or the bit-*packed* weights. Either is
  decoded, one output channel at a time, into offsets into the zero-padded input planes, and
  the conv visits only the 1-bits::

      y_c = eta_c * conv(x, b_c) + xi_c * conv(x, 1) + bias_c

  with ``x = +1 if input >= thr[ci] else -1`` and padding 0 (binary inputs: exact integer counts,
  then ``eta*count + (xi*wsum + bias)`` in float32, as the engine does), or, for real inputs,
  the float sums over the 1-bits and over the whole window.
* **Memory**: one static float arena, sized at export, holds every activation and scratch
  buffer; buffers are placed greedy-by-size on their lifetimes. Element-wise ops work in place
  when their input dies with them, ``flatten`` is free, a conv read only by a pooling or only
  by a residual add runs it channel by channel in its epilogue (the add over the residual when
  that dies there), a conv read only by binary convs that binarise alike writes their +-1 int8
  map instead of floats, and a flat affine (BatchNorm1d) before a linear folds into it. A small
  int32 array holds one output channel's decoded offsets. No malloc, no libc calls (only
  ``math.h`` for INFINITY/NAN and the freestanding ``stdint.h``), no threads.
* Hooks: ``SBNN_ARENA_ATTR`` / ``SBNN_WEIGHT_ATTR`` (e.g. a section attribute) place the arena
  and the weights; ``-DSBNN_PROFILE`` calls the firmware's ``sbnn_profile(node)`` after each
  layer.
* The code compiles warning-free with ``-std=c99 -Wall -Wextra -Werror -pedantic``
  (``tests/test_cexport.py`` compiles it with gcc and clang and compares it with the engine).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sbnn_runtime.files import atomic_write
from sbnn_runtime.ops import Graph, Node, infer_shapes

__all__ = ["CExportError", "BINARY_FORMATS", "CModel", "generate_c", "export_c",
           "format_summary"]

BINARY_FORMATS = ("auto", "sparse", "packed")
_ELEMENTWISE = ("affine", "hardtanh", "relu", "rprelu", "add")


class CExportError(ValueError):
    """The graph cannot be written as C (the message says which node and why)."""


@dataclass
class CModel:
    """What :func:`generate_c` produced: the two files and what they cost."""

    model_c: str
    model_h: str
    input_size: int
    output_size: int
    arena_bytes: int  # the activation arena + the offset scratch (static RAM of the model)
    const_bytes: int  # weights and per-channel vectors (flash), as counted by the generator
    layers: list[dict[str, Any]] = field(default_factory=list)  # one row per binary conv


# -- number formatting -------------------------------------------------------------------------

def _flt(v) -> str:
    """A float32 as the shortest C literal that parses back to the same float."""
    v = np.float32(v)
    if not np.isfinite(v):
        return "NAN" if np.isnan(v) else ("INFINITY" if v > 0 else "-INFINITY")
    a = np.format_float_positional(v, unique=True, trim=".")
    b = np.format_float_scientific(v, unique=True, trim=".", exp_digits=1)
    s = a if len(a) <= len(b) else b
    return s + "f"


def _rows(items: list[str], per_line: int = 12) -> str:
    if not items:
        return "0"
    return ",\n".join("    " + ", ".join(items[i:i + per_line])
                      for i in range(0, len(items), per_line))


def _uint_type(max_value: int) -> tuple[str, int]:
    for t, nbytes in (("uint8_t", 1), ("uint16_t", 2), ("uint32_t", 4)):
        if max_value < 1 << (8 * nbytes):
            return t, nbytes
    raise CExportError(f"value {max_value} does not fit 32 bits")


def _comment(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:\- ]", "_", str(text))[:60]


# -- memory planning ---------------------------------------------------------------------------

@dataclass
class _Buf:
    size: int  # in 4-byte cells
    start: int
    end: int
    offset: int = -1


def _plan(bufs: list[_Buf]) -> int:
    """Greedy by size: each buffer at the lowest offset free over its lifetime; returns the
    arena size in cells."""
    placed: list[_Buf] = []
    for b in sorted(bufs, key=lambda b: (-b.size, b.start)):
        busy = sorted((p.offset, p.offset + p.size) for p in placed
                      if p.start <= b.end and b.start <= p.end)
        off = 0
        for lo, hi in busy:
            if off + b.size <= lo:
                break
            off = max(off, hi)
        b.offset = off
        placed.append(b)
    return max((b.offset + b.size for b in bufs), default=0)


# -- the generator -----------------------------------------------------------------------------

_KERNELS = {
    "pool": r"""

/* max (is_max) or average pooling, k x k window, zero/ignored padding.
   x: (c, h, w) -> y: (c, oh, ow); cip: average counts padded taps */
static void k_pool(const float *x, float *y, int c, int h, int w, int k, int s, int p,
                   int oh, int ow, int is_max, int cip)
{
    int i, oy, ox, ky, kx;
    for (i = 0; i < c; ++i) {
        for (oy = 0; oy < oh; ++oy) {
            const int iy = oy * s - p;
            const int ky0 = iy < 0 ? -iy : 0, ky1 = iy + k > h ? h - iy : k;
            for (ox = 0; ox < ow; ++ox) {
                const int ix = ox * s - p;
                const int kx0 = ix < 0 ? -ix : 0, kx1 = ix + k > w ? w - ix : k;
                float acc = is_max ? x[(i * h + iy + ky0) * w + ix + kx0] : 0.0f;
                for (ky = ky0; ky < ky1; ++ky) {
                    for (kx = kx0; kx < kx1; ++kx) {
                        const float v = x[(i * h + iy + ky) * w + ix + kx];
                        if (is_max)
                            acc = v > acc ? v : acc;
                        else
                            acc += v;
                    }
                }
                if (!is_max)
                    acc = acc / (float)(cip ? k * k : (ky1 - ky0) * (kx1 - kx0));
                y[(i * oh + oy) * ow + ox] = acc;
            }
        }
    }
}

/* What a conv does with each output channel once computed into a plane: a fused residual
   add (y = conv + res, possibly written over res) or pooling, then either the float output or,
   when every reader is a binary conv, the +-1 int8 map that reader binarises to (padded by
   pad, x >= thr[c]): the float tensor never exists. */
typedef struct {
    int pool, k, s, p, oh, ow, is_max, cip; /* the fused pooling (pool = 0: none) */
    int add;                                /* add = 1: add the residual res */
    int bin, pad;                           /* bin = 1: write the int8 map */
    const float *thr;
} sb_epi;

/* channel o, computed into plane (h, w) -> y; tmp: (oh, ow) when pooled and binarised */
static void sb_finish(const sb_epi *e, float *plane, int h, int w, int o, float *y,
                      float *tmp, const float *res)
{
    const float *src = plane;
    int i, j;
    if (e->add) {
        const float *r = res + o * h * w;
        for (i = 0; i < h * w; ++i)
            plane[i] += r[i];
    }
    if (e->pool) {
        float *dst = e->bin ? tmp : y + o * e->oh * e->ow;
        k_pool(plane, dst, 1, h, w, e->k, e->s, e->p, e->oh, e->ow, e->is_max, e->cip);
        src = dst;
        h = e->oh;
        w = e->ow;
    } else if (!e->bin) {
        float *dst = y + o * h * w;
        for (i = 0; i < h * w; ++i)
            dst[i] = plane[i];
    }
    if (e->bin) {
        const int wp = w + 2 * e->pad, hp = h + 2 * e->pad;
        const float t = e->thr ? e->thr[o] : 0.0f;
        int8_t *m = (int8_t *)y + o * hp * wp;
        for (i = 0; i < hp * wp; ++i)
            m[i] = 0;
        for (i = 0; i < h; ++i)
            for (j = 0; j < w; ++j)
                m[(i + e->pad) * wp + j + e->pad] = (int8_t)(src[i * w + j] >= t ? 1 : -1);
    }
}
""",
    "conv2d": r"""
/* float conv, zero padding. x: (ci, h, w) -> y: (co, oh, ow), or with a fused pool, each
   channel into plane (oh, ow) and pooled into y */
static void k_conv2d(const float *x, float *y, const float *wt, const float *bias,
                     int ci, int h, int w, int co, int kh, int kw, int s, int p,
                     int oh, int ow, float *plane, float *tmp, const float *res,
                     const sb_epi *e)
{
    int o, oy, ox, c, ky, kx;
    for (o = 0; o < co; ++o) {
        float *yo = e ? plane : y + o * oh * ow;
        for (oy = 0; oy < oh * ow; ++oy)
            yo[oy] = 0.0f;
        /* tap by tap over the output pixels it reaches: the taps of each pixel still add up
           in (c, ky, kx) order, and no bounds test sits in the inner loop */
        for (c = 0; c < ci; ++c) {
            for (ky = 0; ky < kh; ++ky) {
                /* output rows whose input row oy*s - p + ky lies in [0, h) */
                const int oy0 = ky >= p ? 0 : (p - ky + s - 1) / s;
                const int oy1 = (h - 1 + p - ky) < 0 ? 0 : (h - 1 + p - ky) / s + 1;
                for (kx = 0; kx < kw; ++kx) {
                    const float wv = wt[((o * ci + c) * kh + ky) * kw + kx];
                    const int ox0 = kx >= p ? 0 : (p - kx + s - 1) / s;
                    const int ox1 = (w - 1 + p - kx) < 0 ? 0 : (w - 1 + p - kx) / s + 1;
                    const int oye = oy1 < oh ? oy1 : oh, oxe = ox1 < ow ? ox1 : ow;
                    for (oy = oy0; oy < oye; ++oy) {
                        const int base = (c * h + oy * s - p + ky) * w - p + kx;
                        float *yr = yo + oy * ow;
                        for (ox = ox0; ox < oxe; ++ox)
                            yr[ox] += wv * x[base + ox * s];
                    }
                }
            }
        }
        if (bias)
            for (oy = 0; oy < oh * ow; ++oy)
                yo[oy] += bias[o];
        if (e)
            sb_finish(e, plane, oh, ow, o, y, tmp, res);
    }
}
""",
    "sb_common": r"""
/* One binary conv layer: its shape and its weights in flash. */
typedef struct {
    int ci, h, w, co, kh, kw, s, p, oh, ow;
    int fmt;             /* 0: packed bits; 1/2/4: sparse tap indices of 1, 2 or 4 bytes;
                            8: sparse gaps, one byte each (255: add 255 and read on) */
    int start_bytes;     /* 1, 2 or 4: the type of the sparse start table */
    const void *idx;     /* sparse: tap indices ci*kh*kw + ky*kw + kx, channel by channel */
    const void *start;   /* sparse: co + 1 starts into idx */
    const uint8_t *bits; /* packed: bit j of (co, ci, kh, kw) in C order, LSB first */
    const float *eta, *xi, *bias, *thr;
} sb_layer;

/* Offsets, into the padded input planes, of output channel o's 1-bits; returns their count. */
static int sb_offsets(const sb_layer *L, int o, int32_t *offs)
{
    const int kk = L->kh * L->kw, wp = L->w + 2 * L->p, plane = (L->h + 2 * L->p) * wp;
    int n = 0, k, k0, k1, t;
    if (L->fmt == 0) {
        const int base = o * L->ci * kk;
        for (k = 0; k < L->ci * kk; ++k) {
            const int j = base + k;
            if ((L->bits[j >> 3] >> (j & 7)) & 1)
                offs[n++] = (k / kk) * plane + (k % kk) / L->kw * wp + (k % kk) % L->kw;
        }
        return n;
    }
    if (L->start_bytes == 1) {
        k0 = ((const uint8_t *)L->start)[o];
        k1 = ((const uint8_t *)L->start)[o + 1];
    } else if (L->start_bytes == 2) {
        k0 = ((const uint16_t *)L->start)[o];
        k1 = ((const uint16_t *)L->start)[o + 1];
    } else {
        k0 = (int)((const uint32_t *)L->start)[o];
        k1 = (int)((const uint32_t *)L->start)[o + 1];
    }
    if (L->fmt == 8) {
        const uint8_t *g = (const uint8_t *)L->idx;
        int d = 0;
        t = -1;
        for (k = k0; k < k1; ++k) {
            d += g[k];
            if (g[k] < 255) {
                t += 1 + d;
                d = 0;
                offs[n++] = (t / kk) * plane + (t % kk) / L->kw * wp + (t % kk) % L->kw;
            }
        }
        return n;
    }
    for (k = k0; k < k1; ++k) {
        if (L->fmt == 1)
            t = ((const uint8_t *)L->idx)[k];
        else if (L->fmt == 2)
            t = ((const uint16_t *)L->idx)[k];
        else
            t = (int)((const uint32_t *)L->idx)[k];
        offs[n++] = (t / kk) * plane + (t % kk) / L->kw * wp + (t % kk) % L->kw;
    }
    return n;
}

/* ws (oh, ow) = the window sums of cs (h+2p, w+2p), the channel sums of the padded input:
   conv(x, 1), shared by every output channel. */
static void sb_window_sums(const sb_layer *L, const float *cs, float *ws)
{
    const int kk = L->kh * L->kw, wp = L->w + 2 * L->p;
    int oy, ox, k;
    for (oy = 0; oy < L->oh; ++oy) {
        for (ox = 0; ox < L->ow; ++ox) {
            const float *r = cs + oy * L->s * wp + ox * L->s;
            float acc = 0.0f;
            for (k = 0; k < kk; ++k)
                acc += r[k / L->kw * wp + k % L->kw];
            ws[oy * L->ow + ox] = acc;
        }
    }
}
""",
    "sbconv_bin": r"""
/* Binary conv on binarised inputs. x: (ci, h, w) -> y: (co, oh, ow).
   xp: (ci, h+2p, w+2p) int8 scratch (x = 0: xp already holds the map its producer wrote),
   ws: (oh, ow) + (h+2p, w+2p) float scratch, offs: int32 scratch. */
static void k_sbconv_bin(const sb_layer *L, const float *x, float *y, int8_t *xp, float *ws,
                          int32_t *offs, float *plane, float *tmp, const float *res,
                          const sb_epi *e)
{
    const int hp = L->h + 2 * L->p, wp = L->w + 2 * L->p;
    float *cs = ws + L->oh * L->ow;
    int c, i, j, o, oy, ox, k, n;
    for (i = 0; x && i < L->ci * hp * wp; ++i)
        xp[i] = 0;
    for (c = 0; x && c < L->ci; ++c) {
        const float t = L->thr ? L->thr[c] : 0.0f;
        for (i = 0; i < L->h; ++i)
            for (j = 0; j < L->w; ++j)
                xp[(c * hp + i + L->p) * wp + j + L->p] =
                    (int8_t)(x[(c * L->h + i) * L->w + j] >= t ? 1 : -1);
    }
    /* conv(x, 1): the window sum over all input channels, exact in float (|sum| < 2^24):
       the channels summed into one plane cs, then a kh x kw box sum of cs */
    for (i = 0; i < hp * wp; ++i)
        cs[i] = 0.0f;
    for (c = 0; c < L->ci; ++c)
        for (i = 0; i < hp * wp; ++i)
            cs[i] += (float)xp[c * hp * wp + i];
    sb_window_sums(L, cs, ws);
    for (o = 0; o < L->co; ++o) {
        const float eta = L->eta[o], xi = L->xi[o], b = L->bias[o];
        float *yo = e ? plane : y + o * L->oh * L->ow;
        n = sb_offsets(L, o, offs);
        for (oy = 0; oy < L->oh; ++oy) {
            for (ox = 0; ox < L->ow; ++ox) {
                const int8_t *q = xp + oy * L->s * wp + ox * L->s;
                int32_t acc = 0;
                for (k = 0; k < n; ++k)
                    acc += q[offs[k]];
                yo[oy * L->ow + ox] = eta * (float)acc + (xi * ws[oy * L->ow + ox] + b);
            }
        }
        if (e)
            sb_finish(e, plane, L->oh, L->ow, o, y, tmp, res);
    }
}
""",
    "sbconv_real": r"""
/* Binary weights on real inputs: y = eta * sum over the 1-bits + xi * window sum + bias.
   x: (ci, h, w) -> y: (co, oh, ow); xp: (ci, h+2p, w+2p) float scratch,
   ws: (oh, ow) + (h+2p, w+2p). */
static void k_sbconv_real(const sb_layer *L, const float *x, float *y, float *xp, float *ws,
                          int32_t *offs, float *plane, float *tmp, const float *res,
                          const sb_epi *e)
{
    const int hp = L->h + 2 * L->p, wp = L->w + 2 * L->p;
    float *cs = ws + L->oh * L->ow;
    int c, i, j, o, oy, ox, k, n;
    for (i = 0; i < L->ci * hp * wp; ++i)
        xp[i] = 0.0f;
    for (c = 0; c < L->ci; ++c)
        for (i = 0; i < L->h; ++i)
            for (j = 0; j < L->w; ++j)
                xp[(c * hp + i + L->p) * wp + j + L->p] = x[(c * L->h + i) * L->w + j];
    for (i = 0; i < hp * wp; ++i)
        cs[i] = 0.0f;
    for (c = 0; c < L->ci; ++c)
        for (i = 0; i < hp * wp; ++i)
            cs[i] += xp[c * hp * wp + i];
    sb_window_sums(L, cs, ws);
    for (o = 0; o < L->co; ++o) {
        const float eta = L->eta[o], xi = L->xi[o], b = L->bias[o];
        float *yo = e ? plane : y + o * L->oh * L->ow;
        n = sb_offsets(L, o, offs);
        for (oy = 0; oy < L->oh; ++oy) {
            for (ox = 0; ox < L->ow; ++ox) {
                const float *q = xp + oy * L->s * wp + ox * L->s;
                float acc = 0.0f;
                for (k = 0; k < n; ++k)
                    acc += q[offs[k]];
                yo[oy * L->ow + ox] = eta * acc + (xi * ws[oy * L->ow + ox] + b);
            }
        }
        if (e)
            sb_finish(e, plane, L->oh, L->ow, o, y, tmp, res);
    }
}
""",
    "affine": r"""
/* y = x * scale[c] + shift[c]; x: (c, hw) */
static void k_affine(const float *x, float *y, const float *scale, const float *shift,
                     int c, int hw)
{
    int i, j;
    for (i = 0; i < c; ++i)
        for (j = 0; j < hw; ++j)
            y[i * hw + j] = x[i * hw + j] * scale[i] + shift[i];
}
""",
    "hardtanh": r"""
static void k_hardtanh(const float *x, float *y, float lo, float hi, int n)
{
    int i;
    for (i = 0; i < n; ++i)
        y[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
}
""",
    "relu": r"""
static void k_relu(const float *x, float *y, int n)
{
    int i;
    for (i = 0; i < n; ++i)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}
""",
    "rprelu": r"""
/* z = x - shift_in[c]; y = (z >= 0 ? z : slope[c] z) + shift_out[c]; x: (c, hw) */
static void k_rprelu(const float *x, float *y, const float *si, const float *sl,
                     const float *so, int c, int hw)
{
    int i, j;
    for (i = 0; i < c; ++i) {
        for (j = 0; j < hw; ++j) {
            const float z = x[i * hw + j] - si[i];
            y[i * hw + j] = (z >= 0.0f ? z : z * sl[i]) + so[i];
        }
    }
}
""",
    "add": r"""
static void k_add(const float *a, const float *b, float *y, int n)
{
    int i;
    for (i = 0; i < n; ++i)
        y[i] = a[i] + b[i];
}
""",
    "global_avgpool": r"""
static void k_global_avgpool(const float *x, float *y, int c, int hw)
{
    int i, j;
    for (i = 0; i < c; ++i) {
        float acc = 0.0f;
        for (j = 0; j < hw; ++j)
            acc += x[i * hw + j];
        y[i] = acc / (float)hw;
    }
}
""",
    "linear": r"""
/* y = W x + b; W: (o, n) */
static void k_linear(const float *x, float *y, const float *wt, const float *bias, int o, int n)
{
    int i, j;
    for (i = 0; i < o; ++i) {
        float acc = 0.0f;
        for (j = 0; j < n; ++j)
            acc += wt[i * n + j] * x[j];
        y[i] = bias ? acc + bias[i] : acc;
    }
}
""",
}


def _fold_affine_linear(graph: Graph, shapes) -> Graph:
    """A flat ``affine`` (BatchNorm1d) read only by a ``linear`` folds into it:
    ``W (s x + t) + b = (W s) x + (W t + b)`` (float64, then float32), which saves its vectors
    and a pass; the affine node is then dead and not emitted."""
    readers: dict[int, list[int]] = {}
    for i, nd in enumerate(graph.nodes):
        for j in nd.inputs:
            readers.setdefault(j, []).append(i)
    nodes = list(graph.nodes)
    for i, nd in enumerate(graph.nodes):
        if nd.op != "linear":
            continue
        a = nd.inputs[0]
        src = graph.nodes[a]
        if src.op != "affine" or len(shapes[a]) != 1 or readers[a] != [i] or a == graph.output:
            continue
        w = nd.params["weight"].astype(np.float64)
        scale = src.params["scale"].astype(np.float64)
        shift = src.params["shift"].astype(np.float64)
        b = nd.params["bias"].astype(np.float64) if "bias" in nd.params else 0.0
        params = {"weight": (w * scale[None, :]).astype(np.float32),
                  "bias": (b + w @ shift).astype(np.float32)}
        nodes[i] = Node("linear", [src.inputs[0]], dict(nd.attrs), params,
                        f"{src.name}+{nd.name}")
    return Graph(nodes, graph.output, graph.metadata)


class _Gen:
    def __init__(self, graph: Graph, binary_format: str, values: bool = True):
        if binary_format not in BINARY_FORMATS:
            raise ValueError(f"binary_format must be one of {BINARY_FORMATS}, "
                             f"got {binary_format!r}")
        try:
            self.shapes = infer_shapes(graph)
        except ValueError as exc:
            raise CExportError(f"invalid graph: {exc}") from None
        self.g = _fold_affine_linear(graph, self.shapes)
        self.fmt = binary_format
        self.values = values
        self.data: list[str] = []  # const arrays
        self.const_bytes = 0
        self.kernels: set[str] = set()
        self.layers: list[dict[str, Any]] = []
        self.max_ones = 1

    # const arrays -----------------------------------------------------------------------------
    def farr(self, name: str, arr: np.ndarray | None) -> str:
        if arr is None:
            return "0"
        flat = np.asarray(arr, np.float32).reshape(-1)
        self.const_bytes += 4 * flat.size
        if not self.values:
            return name
        self.data.append(f"SBNN_WEIGHT_ATTR static const float {name}[{max(flat.size, 1)}] = {{\n"
                         f"{_rows([_flt(v) for v in flat], 8)}\n}};")
        return name

    def uarr(self, name: str, ctype: str, nbytes: int, vals: np.ndarray) -> str:
        vals = np.asarray(vals).reshape(-1)
        self.data.append(f"SBNN_WEIGHT_ATTR static const {ctype} {name}[{max(vals.size, 1)}] = {{\n"
                         f"{_rows([str(int(v)) for v in vals], 16)}\n}};")
        self.const_bytes += nbytes * vals.size
        return name

    # binary conv weights ----------------------------------------------------------------------
    def sb_weights(self, i: int, bits: np.ndarray) -> dict[str, Any]:
        co = bits.shape[0]
        rows = bits.reshape(co, -1).astype(bool)
        n_taps = rows.shape[1]
        ch, tap = np.nonzero(rows)  # row-major: taps ascending within each channel
        ones = int(tap.size)
        per_ch = rows.sum(1)
        # sparse, as indices: ones x (1, 2 or 4 bytes) + a start per channel
        idx_t, idx_b = _uint_type(max(n_taps - 1, 0))
        start_t, start_b = _uint_type(ones)
        index_bytes = ones * idx_b + (co + 1) * start_b
        # sparse, as gaps: the zeros before each 1-bit in bytes, 255 meaning "255 more"
        prev = np.where(np.r_[True, ch[1:] != ch[:-1]], -1, np.r_[-1, tap[:-1]])
        gap = tap - prev - 1
        nbytes = gap // 255 + 1
        gstream = np.full(int(nbytes.sum()), 255, np.int64)
        gstream[np.cumsum(nbytes) - 1] = gap % 255
        gper_ch = np.bincount(ch, weights=nbytes, minlength=co).astype(np.int64)
        gstart_t, gstart_b = _uint_type(gstream.size)
        gap_bytes = gstream.size + (co + 1) * gstart_b
        sparse_bytes = min(index_bytes, gap_bytes)
        packed_bytes = (bits.size + 7) // 8
        fmt = self.fmt if self.fmt != "auto" else (
            "sparse" if sparse_bytes <= packed_bytes else "packed")
        self.max_ones = max(self.max_ones, int(per_ch.max()) if co else 1)
        zero_k = float((bits.reshape(co * bits.shape[1], -1).max(1) == 0).mean())
        row = {"node": i, "layer": self.g.nodes[i].name, "shape": list(bits.shape),
               "weights": int(bits.size), "ones": ones, "zero_kernels": zero_k,
               "format": fmt, "sparse_bytes": sparse_bytes, "packed_bytes": packed_bytes}
        self.layers.append(row)
        if fmt == "sparse" and gap_bytes < index_bytes:
            row["encoding"] = "gap8"
            starts = np.concatenate([[0], np.cumsum(gper_ch)])
            idx = self.uarr(f"L{i}_gap", "uint8_t", 1, gstream) if ones else "0"
            start = self.uarr(f"L{i}_start", gstart_t, gstart_b, starts)
            return {"fmt": 8, "start_bytes": gstart_b, "idx": idx, "start": start, "bits": "0"}
        if fmt == "sparse":
            row["encoding"] = f"idx{8 * idx_b}"
            starts = np.concatenate([[0], np.cumsum(per_ch)])
            idx = self.uarr(f"L{i}_idx", idx_t, idx_b, tap) if ones else "0"
            start = self.uarr(f"L{i}_start", start_t, start_b, starts)
            return {"fmt": idx_b, "start_bytes": start_b, "idx": idx, "start": start,
                    "bits": "0"}
        row["encoding"] = "packed"
        packed = np.packbits(bits.reshape(-1).astype(np.uint8), bitorder="little")
        return {"fmt": 0, "start_bytes": 2, "idx": "0", "start": "0",
                "bits": self.uarr(f"L{i}_bits", "uint8_t", 1, packed)}

    # one node -> C statements + scratch needs -------------------------------------------------
    def epi_arg(self, i: int, pool: int | None, binmap, sc: dict[str, str],
                res: str | None) -> str:
        """``plane, tmp, res, &E{i}``: the node fused after conv ``i`` (a pooling, or an add of
        ``res``) and its binarised output ``binmap = (thr, pad)`` (``0, 0, 0, 0``: none)."""
        self.kernels.add("pool")
        if pool is None and binmap is None:
            return "0, 0, 0, 0"
        f: list = [0] * 8
        if pool is not None and self.g.nodes[pool].op != "add":
            A, out = self.g.nodes[pool].attrs, self.shapes[pool]
            f = [1, A["k"], A["stride"], A["pad"], out[1], out[2],
                 int(self.g.nodes[pool].op == "maxpool"),
                 int(bool(A.get("count_include_pad", 1)))]
        f.append(int(res is not None))
        f += [0, 0, "0"] if binmap is None else [
            1, binmap[1], self.farr(f"E{i}_thr", binmap[0])]
        self.data.append(f"static const sb_epi E{i} = {{" + ", ".join(map(str, f)) + "};")
        return f"{sc['plane']}, {sc.get('tmp', '0')}, {res or '0'}, &E{i}"

    def node(self, i: int, x: list[str], y: str, sc: dict[str, str], pool: int | None = None,
             binmap=None, in_map: bool = False, res: str | None = None) -> str:
        """C statement of node ``i``; with ``pool``, the pooling or add node fused after it
        (``res``: the add's other operand); with ``binmap``, writing the int8 map of its
        readers; ``in_map``: reading one."""
        nd = self.g.nodes[i]
        P, A = nd.params, nd.attrs
        ins = [self.shapes[j] for j in nd.inputs]
        out = self.shapes[i]
        op = nd.op
        n_out = int(np.prod(out))
        if op == "conv2d":
            self.kernels.add("conv2d")
            ci, h, w = ins[0]
            co, _, kh, kw = P["weight"].shape
            wt, b = self.farr(f"L{i}_w", P["weight"]), self.farr(f"L{i}_b", P.get("bias"))
            pa = self.epi_arg(i, pool, binmap, sc, res)
            return (f"k_conv2d({x[0]}, {y}, {wt}, {b}, {ci}, {h}, {w}, {co}, {kh}, {kw}, "
                    f"{A['stride']}, {A['padding']}, {out[1]}, {out[2]}, {pa});")
        if op == "sbconv2d":
            self.kernels.add("sb_common")
            ci, h, w = ins[0]
            co, _, kh, kw = P["bits"].shape
            wts = self.sb_weights(i, P["bits"])
            fields = [ci, h, w, co, kh, kw, A["stride"], A["padding"], out[1], out[2],
                      wts["fmt"], wts["start_bytes"], wts["idx"], wts["start"], wts["bits"],
                      self.farr(f"L{i}_eta", P["eta"]), self.farr(f"L{i}_xi", P["xi"]),
                      self.farr(f"L{i}_bias", P["bias"]),
                      self.farr(f"L{i}_thr", P.get("thr")) if A["binary_input"] else "0"]
            self.data.append(f"static const sb_layer L{i} = {{"
                             + ", ".join(str(f) for f in fields) + "};")
            kind = "bin" if A["binary_input"] else "real"
            self.kernels.add("sbconv_" + kind)
            if in_map:
                src, xp = "0", f"(int8_t *){x[0]}"
            else:
                src, xp = x[0], (f"(int8_t *){sc['xp']}" if kind == "bin" else sc["xp"])
            pa = self.epi_arg(i, pool, binmap, sc, res)
            return (f"k_sbconv_{kind}(&L{i}, {src}, {y}, {xp}, {sc['ws']}, sbnn_offs, {pa});")
        if op in ("affine", "rprelu"):
            self.kernels.add(op)
            c = out[0]
            hw = n_out // c
            names = ["scale", "shift"] if op == "affine" else ["shift_in", "slope", "shift_out"]
            arrs = ", ".join(self.farr(f"L{i}_{k}", P[k]) for k in names)
            return f"k_{op}({x[0]}, {y}, {arrs}, {c}, {hw});"
        if op == "hardtanh":
            self.kernels.add(op)
            return f"k_hardtanh({x[0]}, {y}, {_flt(A['lo'])}, {_flt(A['hi'])}, {n_out});"
        if op == "relu":
            self.kernels.add(op)
            return f"k_relu({x[0]}, {y}, {n_out});"
        if op == "add":
            self.kernels.add(op)
            return f"k_add({x[0]}, {x[1]}, {y}, {n_out});"
        if op in ("maxpool", "avgpool"):
            self.kernels.add("pool")
            c, h, w = ins[0]
            cip = int(bool(A.get("count_include_pad", True)))
            return (f"k_pool({x[0]}, {y}, {c}, {h}, {w}, {A['k']}, {A['stride']}, {A['pad']}, "
                    f"{out[1]}, {out[2]}, {int(op == 'maxpool')}, {cip});")
        if op == "global_avgpool":
            self.kernels.add(op)
            c, h, w = ins[0]
            return f"k_global_avgpool({x[0]}, {y}, {c}, {h * w});"
        if op == "linear":
            self.kernels.add(op)
            o, n = P["weight"].shape
            wt, b = self.farr(f"L{i}_w", P["weight"]), self.farr(f"L{i}_b", P.get("bias"))
            return f"k_linear({x[0]}, {y}, {wt}, {b}, {o}, {n});"
        raise CExportError(f"node {i} ({op} {nd.name!r}): op has no C translation")

    def scratch_cells(self, i: int, pool: int | None, binmap, in_map: bool) -> dict[str, int]:
        """Scratch buffers of node ``i`` (4-byte cells): a binary conv's padded input planes
        (unless its producer wrote them) and window sums; a conv's channel plane when it pools
        or binarises its output, and the pooled plane when it does both."""
        nd = self.g.nodes[i]
        sc = {}
        if nd.op in ("conv2d", "sbconv2d") and (pool is not None or binmap is not None):
            sc["plane"] = self.shapes[i][1] * self.shapes[i][2]
            if pool is not None and binmap is not None and self.g.nodes[pool].op != "add":
                sc["tmp"] = self.shapes[pool][1] * self.shapes[pool][2]
        if nd.op == "sbconv2d":
            ci, h, w = self.shapes[nd.inputs[0]]
            p = nd.attrs["padding"]
            planes = ci * (h + 2 * p) * (w + 2 * p)
            if not in_map:
                sc["xp"] = (planes + 3) // 4 if nd.attrs["binary_input"] else planes
            sc["ws"] = self.shapes[i][1] * self.shapes[i][2] + (h + 2 * p) * (w + 2 * p)
        return sc

    # the whole graph --------------------------------------------------------------------------
    def run(self) -> CModel:
        g, shapes = self.g, self.shapes
        n = len(g.nodes)
        need = {g.output}
        for i in range(n - 1, -1, -1):
            if i in need:
                need.update(g.nodes[i].inputs)
        order = [i for i in range(1, n) if i in need]
        last = {j: i for i in order for j in g.nodes[i].inputs}
        last[g.output] = n  # read by the final copy
        users: dict[int, list[int]] = {}
        for i in order:
            for j in g.nodes[i].inputs:
                users.setdefault(j, []).append(i)
        # a conv whose only reader is a pooling is fused with it: conv and pool run channel by
        # channel through one plane, and the conv's full output never exists
        fused = {i: users[i][0] for i in order
                 if g.nodes[i].op in ("conv2d", "sbconv2d") and i != g.output
                 and len(users.get(i, [])) == 1
                 and g.nodes[users[i][0]].op in ("maxpool", "avgpool")}
        # a conv whose only reader is a residual add of an earlier tensor r adds r channel by
        # channel, writing over r when r dies there (a binary conv reads its input only while
        # binarising it, so r may even be that input)
        resid: dict[int, int] = {}
        for i in order:
            rd = users.get(i, [])
            if g.nodes[i].op not in ("conv2d", "sbconv2d") or i in fused or i == g.output or \
                    len(rd) != 1 or g.nodes[rd[0]].op != "add":
                continue
            a, (u, v) = rd[0], g.nodes[rd[0]].inputs
            r = v if u == i else u
            if r != i and r < i:
                fused[i], resid[i] = a, r
        fused_into = {j: i for i, j in fused.items()}
        # a conv output (after its fused pool) whose every reader is a binary conv binarising
        # with the same thresholds and padding is stored as that int8 map, a quarter the size
        binmap: dict[int, tuple] = {}
        for i in order:
            t = fused.get(i, i)
            rd = users.get(t, [])
            if g.nodes[i].op not in ("conv2d", "sbconv2d") or t == g.output or not rd or \
                    not all(g.nodes[r].op == "sbconv2d" and g.nodes[r].attrs["binary_input"]
                            for r in rd):
                continue
            thr = [g.nodes[r].params.get("thr") for r in rd]
            pads = {g.nodes[r].attrs["padding"] for r in rd}
            same = all((a is None and thr[0] is None) or (a is not None and thr[0] is not None
                                                          and np.array_equal(a, thr[0]))
                       for a in thr)
            if same and len(pads) == 1:
                binmap[t] = (thr[0], pads.pop())
        # storage: -1 is the caller's input; flatten aliases; element-wise ops reuse a dying input
        store: dict[int, int] = {0: -1}
        bufs: dict[int, _Buf] = {}
        store_end = lambda s: max(last.get(t, t) for t, v in store.items() if v == s)  # noqa: E731
        for i in order:
            nd = g.nodes[i]
            size = int(np.prod(shapes[i]))
            if i in fused:
                store[i] = -2  # never materialised
                continue
            if i in binmap:
                c, h, w = shapes[i]
                p = binmap[i][1]
                size = (c * (h + 2 * p) * (w + 2 * p) + 3) // 4
            if i in fused_into:  # produced when its conv runs
                c = fused_into[i]
                r = resid.get(c)
                if r is not None and i not in binmap and store[r] >= 0:
                    sr = store[r]
                    readers = {k for t, v in store.items() if v == sr for k in users.get(t, [])}
                    binary = g.nodes[c].op == "sbconv2d" and g.nodes[c].attrs["binary_input"]
                    if all(k <= c or k == i for k in readers) and (
                            binary or store[g.nodes[c].inputs[0]] != sr):
                        store[i] = sr  # over the residual, channel by channel
                        continue
                store[i] = i
                bufs[i] = _Buf(size, c, i)
                continue
            if nd.op == "flatten":
                store[i] = store[nd.inputs[0]]
                continue
            if nd.op in _ELEMENTWISE:
                cand = [j for j in nd.inputs if store[j] >= 0 and store_end(store[j]) == i]
                if cand:
                    store[i] = store[cand[0]]
                    continue
            store[i] = i
            bufs[i] = _Buf(size, i, i)
        for t, s in store.items():
            if s >= 0:
                bufs[s].end = max(bufs[s].end, last.get(t, t))
        in_map = {i: bool(g.nodes[i].inputs) and g.nodes[i].inputs[0] in binmap
                  for i in order}
        scratch: dict[int, dict[str, _Buf]] = {
            i: {k: _Buf(c, i, i) for k, c in self.scratch_cells(
                i, fused.get(i), binmap.get(fused.get(i, i)), in_map[i]).items()}
            for i in order}
        arena = _plan(list(bufs.values()) + [b for bs in scratch.values() for b in bs.values()])
        arena = max(arena, 1)

        def ptr(t: int) -> str:
            s = store[t]
            return "input" if s < 0 else f"(sbnn_arena + {bufs[s].offset})"

        body = []
        for i in order:
            nd = g.nodes[i]
            desc = f"    /* node {i}: {nd.op} {_comment(nd.name)} -> {shapes[i]}"
            if nd.op == "flatten":
                body.append(desc + ", aliases its input */")
                continue
            if i in fused_into:
                body.append(desc + f", fused into node {fused_into[i]} */")
                continue
            sc = {k: f"(sbnn_arena + {b.offset})" for k, b in scratch[i].items()}
            res = ptr(resid[i]) if i in resid else None
            if i in fused:
                j = fused[i]
                desc += f" + node {j}: {g.nodes[j].op} {_comment(g.nodes[j].name)} -> {shapes[j]}"
            desc += " */"
            out_t = fused.get(i, i)
            if out_t in binmap:
                desc = desc[:-3] + ", written as its readers' int8 map */"
            stmt = self.node(i, [ptr(j) for j in nd.inputs], ptr(out_t), sc, fused.get(i),
                             binmap.get(out_t), in_map[i], res)
            body += [desc, "    " + stmt, f"    SBNN_LAYER_DONE({i});"]
        n_out = int(np.prod(shapes[g.output]))
        src = ptr(g.output)
        body.append(f"    for (i = 0; i < {n_out}; ++i)\n        output[i] = {src}[i];")
        c, h, w = g.input_shape
        binary = "sb_common" in self.kernels
        arena_bytes = 4 * arena + (4 * self.max_ones if binary else 0)
        header = _header(c * h * w, n_out, (c, h, w), arena_bytes, self.const_bytes)
        kernels = [_KERNELS[k] for k in _KERNELS if k in self.kernels]
        model_c = "\n".join([
            "/* Generated by sbnn (sbnn.deploy.cexport): one sparse-binary network in C99.",
            "   Do not edit; regenerate with `sbnn export RUN --c DIR`. */",
            "#include <math.h>",
            "#include <stdint.h>",
            '#include "model.h"',
            "",
            "#if defined(__clang__)",
            "#pragma STDC FP_CONTRACT OFF /* the engine rounds a*b + c as two operations */",
            "#endif",
            "",
            "/* placement hooks: e.g. -DSBNN_ARENA_ATTR='__attribute__((section(\".dtcm\")))' */",
            "#ifndef SBNN_ARENA_ATTR",
            "#define SBNN_ARENA_ATTR",
            "#endif",
            "#ifndef SBNN_WEIGHT_ATTR",
            "#define SBNN_WEIGHT_ATTR",
            "#endif",
            "/* with -DSBNN_PROFILE, sbnn_profile(node) (the firmware's) runs after each layer */",
            "#ifdef SBNN_PROFILE",
            "#define SBNN_LAYER_DONE(node) sbnn_profile(node)",
            "#else",
            "#define SBNN_LAYER_DONE(node) ((void)0)",
            "#endif",
            "",
            f"SBNN_ARENA_ATTR static float sbnn_arena[{arena}];  /* activations, by liveness */",
            f"SBNN_ARENA_ATTR static int32_t sbnn_offs[{self.max_ones}];  /* a channel's offsets */"
            if binary else "",
            *kernels,
            "/* -- weights (flash) -- */",
            *self.data,
            "",
            "int sbnn_run(const float *input, float *output)",
            "{",
            "    int i;",
            "    if (!input || !output)",
            "        return -1;",
            "    (void)sbnn_arena; /* unused when the graph needs no buffer */",
            *body,
            "    return 0;",
            "}",
            "",
        ])
        return CModel(model_c, header, c * h * w, n_out, arena_bytes, self.const_bytes,
                      self.layers)


def _header(n_in: int, n_out: int, chw, arena_bytes: int, const_bytes: int) -> str:
    return f"""/* Generated by sbnn (sbnn.deploy.cexport). */
#ifndef SBNN_MODEL_H
#define SBNN_MODEL_H

#define SBNN_INPUT_C {chw[0]}
#define SBNN_INPUT_H {chw[1]}
#define SBNN_INPUT_W {chw[2]}
#define SBNN_INPUT_SIZE {n_in}   /* floats of one image, (C, H, W) */
#define SBNN_OUTPUT_SIZE {n_out}  /* floats of its output */
#define SBNN_ARENA_BYTES {arena_bytes}  /* static RAM of the model (activation arena + scratch) */
#define SBNN_WEIGHT_BYTES {const_bytes}  /* const weights and vectors (flash) */

#ifdef __cplusplus
extern "C" {{
#endif

/* Runs the model on one image: input[SBNN_INPUT_SIZE] -> output[SBNN_OUTPUT_SIZE].
   Returns 0 on success, -1 on a NULL pointer. Not reentrant (one static arena). */
int sbnn_run(const float *input, float *output);

#ifdef SBNN_PROFILE
/* defined by the firmware when model.c is built with -DSBNN_PROFILE: called after each layer
   with its node number (see the comments in model.c), e.g. to read a cycle counter */
void sbnn_profile(int node);
#endif

#ifdef __cplusplus
}}
#endif

#endif /* SBNN_MODEL_H */
"""


def generate_c(graph: Graph, binary_format: str = "auto", *, values: bool = True) -> CModel:
    """Translate ``graph`` into C99 source (nothing written). ``binary_format``: ``"auto"``
    (per layer, the smaller of sparse and packed), or force ``"sparse"`` / ``"packed"``.
    ``values=False`` leaves the float arrays out (the source does not compile): sizes only,
    fast on large float models."""
    return _Gen(graph, binary_format, values).run()


def export_c(graph: Graph, out_dir: str | os.PathLike, binary_format: str = "auto") -> CModel:
    """Write ``out_dir/model.c`` and ``out_dir/model.h`` (atomically) and return the
    :class:`CModel` (sizes, per-layer formats)."""
    cm = generate_c(graph, binary_format)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "model.h", cm.model_h.encode())
    atomic_write(out / "model.c", cm.model_c.encode())
    return cm


def format_summary(cm: CModel) -> str:
    """Per binary conv: the storage chosen and its bytes; then the model's flash and RAM."""
    lines = [f"{'layer':<28} {'weights':>9} {'ones':>7} {'0-kern':>7} {'format':>7} "
             f"{'sparse B':>9} {'packed B':>9}"]
    for r in cm.layers:
        lines.append(f"{r['layer']:<28} {r['weights']:>9} {r['ones']:>7} "
                     f"{r['zero_kernels']:>7.3f} {r['encoding']:>7} {r['sparse_bytes']:>9} "
                     f"{r['packed_bytes']:>9}")
    lines.append(f"C model: weights {cm.const_bytes} B (const), arena {cm.arena_bytes} B, "
                 f"input {cm.input_size} floats, output {cm.output_size} floats")
    return "\n".join(lines)
