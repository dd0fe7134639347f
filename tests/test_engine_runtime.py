"""The native engine runtime (sbnn._core.Engine) against the same graph computed in torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sbnn_runtime import kernels, native
from sbnn_runtime.native import core, native_error

pytestmark = pytest.mark.skipif(core is None, reason=f"no native core: {native_error}")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)


def _rprelu(x, s1, a, s2):
    v = x - s1[None, :, None, None]
    return torch.where(v >= 0, v, a[None, :, None, None] * v) + s2[None, :, None, None]


def build_block_net(num_threads: int, impl: str = "auto", sparse: bool = True):
    """A small ResNet-like graph that uses every op; returns (engine, torch forward)."""
    g = torch.Generator().manual_seed(0)

    def r(*s, scale=1.0):
        return torch.randn(*s, generator=g) * scale

    C = 6
    w0, b0 = r(C, 3, 3, 3, scale=0.5), r(C)
    bn_s, bn_b = r(C).abs() + 0.5, r(C)
    bits = (torch.rand(C, C, 3, 3, generator=g) < 0.2).to(torch.uint8)
    eta, xi, bias, thr = r(C).abs() + 0.1, r(C, scale=0.1), r(C), r(C, scale=0.2)
    s1, a, s2 = r(C, scale=0.1), r(C).abs() * 0.25, r(C, scale=0.1)
    bits2 = (torch.rand(2 * C, C, 3, 3, generator=g) < 0.1).to(torch.uint8)
    eta2, xi2, bias2 = r(2 * C).abs() + 0.1, r(2 * C, scale=0.1), r(2 * C)
    wsc = r(2 * C, C, 1, 1, scale=0.5)
    f_s, f_b = r(2 * C).abs() + 0.5, r(2 * C)
    wl, bl = r(5, 2 * C, scale=0.3), r(5)

    eng = core.Engine(num_threads)
    t = eng.input(3, 8, 8)
    t = eng.conv2d(t, _np(w0), _np(b0), 1, 1)
    t = eng.affine(t, _np(bn_s), _np(bn_b))
    t = eng.hardtanh(t, -1.0, 1.0)
    skip = t
    u = eng.sbconv2d(t, bits.numpy(), _np(eta), _np(xi), _np(bias), 1, 1, _np(thr),
                     sparse=sparse, impl=impl)
    u = eng.rprelu(u, _np(s1), _np(a), _np(s2))
    t = eng.add(u, skip)
    t = eng.maxpool(t, 3, 1, 1)
    d = eng.sbconv2d(t, bits2.numpy(), _np(eta2), _np(xi2), _np(bias2), 2, 1, sparse=sparse,
                     impl=impl)
    sc = eng.avgpool(t, 2, 2, 0)
    sc = eng.conv2d(sc, _np(wsc))
    sc = eng.avgpool(sc, 3, 1, 1, count_include_pad=False)
    t = eng.add(d, eng.relu(sc))
    t = eng.avgpool(t, 3, 1, 1)
    t = eng.global_avgpool(t)
    t = eng.flatten(t)
    t = eng.affine(t, _np(f_s), _np(f_b))
    t = eng.linear(t, _np(wl), _np(bl))
    eng.set_output(t)

    def bconv(x, bts, e, x_i, b, s, thr_=None):
        args = [None if a is None else a.numpy() for a in (x, bts, e, x_i, b, thr_)]
        return torch.from_numpy(kernels.bconv2d_reference(*args[:5], s, 1, args[5]))

    def forward(x):
        y = F.conv2d(x, w0, b0, padding=1)
        y = y * bn_s[None, :, None, None] + bn_b[None, :, None, None]
        y = F.hardtanh(y)
        u = _rprelu(bconv(y, bits, eta, xi, bias, 1, thr), s1, a, s2)
        y = F.max_pool2d(u + y, 3, 1, 1)
        d = bconv(y, bits2, eta2, xi2, bias2, 2)
        sc = F.conv2d(F.avg_pool2d(y, 2, 2), wsc)
        sc = F.avg_pool2d(sc, 3, 1, 1, count_include_pad=False)
        y = F.avg_pool2d(d + F.relu(sc), 3, 1, 1)
        y = y.mean(dim=(2, 3))
        y = y * f_s + f_b
        return F.linear(y, wl, bl)

    return eng, forward


@pytest.mark.parametrize("num_threads,sparse", [(1, True), (2, True), (2, False)])
def test_graph_with_every_op_matches_torch(num_threads, sparse):
    eng, forward = build_block_net(num_threads, sparse=sparse)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = eng.run(x.numpy())
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (3, 5)
    # binarisation thresholds make tiny float differences before a sign flip possible; the
    # float ops before the first binary conv are exact enough in practice at this size
    torch.testing.assert_close(torch.from_numpy(y), forward(x), rtol=1e-4, atol=1e-4)
    y1 = eng.run(x[1:2].numpy())
    torch.testing.assert_close(torch.from_numpy(y1), torch.from_numpy(y[1:2]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", native.available_impls())
def test_every_impl_runs_the_graph(impl):
    eng, forward = build_block_net(1, impl=impl)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(torch.from_numpy(eng.run(x)), forward(x), rtol=1e-4, atol=1e-4)


def test_torch_and_non_contiguous_inputs():
    eng, forward = build_block_net(1)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = eng.run(x.numpy())
    np.testing.assert_array_equal(eng.run(x), ref)  # torch tensor through DLPack
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not xt.is_contiguous()
    np.testing.assert_array_equal(eng.run(xt), ref)
    np.testing.assert_array_equal(eng.run(np.asfortranarray(x.numpy())), ref)


def test_profile_and_layer_times():
    eng, _ = build_block_net(1)
    x = np.zeros((1, 3, 8, 8), np.float32)
    y, times = eng.run(x, profile=True)
    assert y.shape == (1, 5)
    assert len(times) == eng.num_ops
    assert all(isinstance(n, str) and s >= 0 for n, s in times)
    assert [n for n, _ in eng.layer_times()] == [n for n, _ in times]
    assert times[0][0] == "conv2d"


def test_shapes_and_flat_ops():
    eng = core.Engine(0)
    assert eng.num_threads >= 1
    t = eng.input(4, 5, 5)
    assert eng.shape(t) == [4, 5, 5]
    t = eng.global_avgpool(t)
    assert eng.shape(t) == [4, 1, 1]
    f = eng.flatten(t)
    assert eng.shape(f) == [4]
    f = eng.relu(eng.hardtanh(f, -0.5, 0.5))
    eng.set_output(f)
    x = torch.randn(2, 4, 5, 5)
    ref = F.relu(F.hardtanh(x.mean(dim=(2, 3)), -0.5, 0.5))
    torch.testing.assert_close(torch.from_numpy(eng.run(x)), ref, rtol=1e-6, atol=1e-6)


def test_build_time_shape_errors():
    eng = core.Engine(1)
    t = eng.input(4, 6, 6)
    one = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="input channels"):
        eng.conv2d(t, np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="input channels"):
        eng.sbconv2d(t, np.zeros((2, 3, 3, 3), np.uint8), one[:2], one[:2], one[:2])
    with pytest.raises(ValueError, match="eta"):
        eng.sbconv2d(t, np.zeros((2, 4, 3, 3), np.uint8), one, one[:2], one[:2])
    with pytest.raises(ValueError, match="affine"):
        eng.affine(t, one[:3], one[:3])
    with pytest.raises(ValueError, match="flat"):
        eng.linear(t, np.zeros((2, 4), np.float32))
    u = eng.conv2d(t, np.zeros((4, 4, 3, 3), np.float32), stride=2)
    with pytest.raises(ValueError, match="shape mismatch"):
        eng.add(t, u)
    with pytest.raises(ValueError, match="unknown tensor"):
        eng.relu(99)
    with pytest.raises(ValueError, match="input features"):
        eng.linear(eng.flatten(t), np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="pad"):
        eng.maxpool(t, 2, 1, 2)
    with pytest.raises(ValueError, match="output"):
        eng.run(np.zeros((1, 4, 6, 6), np.float32))


def test_run_time_shape_errors():
    eng = core.Engine(1)
    t = eng.input(2, 4, 4)
    eng.set_output(eng.relu(t))
    with pytest.raises(ValueError, match=r"\(N, 2, 4, 4\)"):
        eng.run(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="4-D"):
        eng.run(np.zeros((2, 4, 4), np.float32))
    y = eng.run(np.zeros((0, 2, 4, 4), np.float32))
    assert y.shape == (0, 2, 4, 4)


def test_dense_and_sparse_engines_agree_on_a_wide_layer():
    g = torch.Generator().manual_seed(9)
    Ci, Co = 130, 70
    bits = (torch.rand(Co, Ci, 3, 3, generator=g) < 0.05).to(torch.uint8).numpy()
    eta, xi, bias = (torch.rand(Co, generator=g).numpy() for _ in range(3))
    outs = []
    for sparse in (True, False):
        eng = core.Engine(2)
        t = eng.input(Ci, 7, 7)
        eng.set_output(eng.sbconv2d(t, bits, eta, xi, bias, 2, 1, sparse=sparse))
        outs.append(eng.run(torch.randn(2, Ci, 7, 7, generator=torch.Generator().manual_seed(1))))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-4)
