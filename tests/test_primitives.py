import itertools
import math

import numpy as np
import pytest
import torch

import sbnn
from sbnn.method.primitives import closed_form, entropy, sign, to_bits


def sse(w, bits):
    """Least-squares error of the best levels for a given split (group means)."""
    w = w.double().reshape(-1)
    b = bits.reshape(-1)
    err = 0.0
    for group in (w[b], w[~b]):
        if group.numel():
            err += float(((group - group.mean()) ** 2).sum())
    return err


def brute_force(w, k=None):
    """Best split over every subset with beta >= alpha (k given: subsets of size k).

    Returns (error, bits). The constraint beta >= alpha names which group is "1"; without it the
    complement of a split would tie with it.
    """
    flat = w.reshape(-1)
    n = flat.numel()
    best = (math.inf, None)
    sizes = [k] if k is not None else range(n + 1)
    for size in sizes:
        for ones in itertools.combinations(range(n), size):
            bits = torch.zeros(n, dtype=torch.bool)
            bits[list(ones)] = True
            if 0 < size < n and flat[bits].mean() < flat[~bits].mean() - 1e-6:
                continue
            e = sse(flat, bits)
            if e < best[0] - 1e-12:
                best = (e, bits)
    return best


def cases():
    g = torch.Generator().manual_seed(0)
    yield "random", torch.randn(9, generator=g)
    yield "skewed", torch.randn(10, generator=g).exp()
    yield "constant", torch.full((7,), 0.3)
    yield "n1", torch.tensor([0.7])
    yield "n2", torch.tensor([0.7, -1.2])
    yield "tied", torch.tensor([1.0, 1.0, -1.0, 2.0, -1.0, 1.0, 0.0, 2.0])
    yield "float64", torch.randn(8, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name,w", list(cases()))
def test_closed_form_optimal_threshold_matches_brute_force(name, w):
    alpha, beta, bits = closed_form(w)
    best_err, _ = brute_force(w)
    assert sse(w, bits) == pytest.approx(best_err, abs=1e-9)
    # alpha, beta are the group means of the returned split
    q = sbnn.dequantize(alpha, beta, bits)
    assert float(((w.double() - q.double()) ** 2).sum()) == pytest.approx(best_err, abs=1e-6)
    assert float(beta) >= float(alpha)
    assert alpha.dtype == w.dtype and bits.dtype == torch.bool and bits.shape == w.shape


@pytest.mark.parametrize("name,w", list(cases()))
@pytest.mark.parametrize("ones", [0.05, 0.3, 0.5, 0.8])
def test_closed_form_fixed_ones_matches_brute_force(name, w, ones):
    n = w.numel()
    k = math.floor(ones * n + 0.5)
    alpha, beta, bits = closed_form(w, ones=ones)
    assert int(bits.sum()) == k
    best_err, _ = brute_force(w, k)
    assert sse(w, bits) == pytest.approx(best_err, abs=1e-9)
    flat = w.reshape(-1)
    if 0 < k < n:
        torch.testing.assert_close(beta, flat[bits.reshape(-1)].mean(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(alpha, flat[~bits.reshape(-1)].mean(), rtol=1e-6, atol=1e-7)
    else:  # an empty group takes the other group's mean
        torch.testing.assert_close(alpha, flat.mean())
        torch.testing.assert_close(beta, flat.mean())


def test_closed_form_unique_optimum_bits_equal_brute_force():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        w = torch.randn(8, generator=g)
        _, bits = brute_force(w)
        assert torch.equal(closed_form(w)[2].reshape(-1), bits)
        _, bits_k = brute_force(w, 3)
        assert torch.equal(closed_form(w, ones=3 / 8)[2].reshape(-1), bits_k)


def test_closed_form_ties_pinned():
    w = torch.tensor([1.0, 1.0, 1.0, 0.0])
    # fixed ones: among equal values the later positions become 1
    _, _, bits = closed_form(w, ones=0.5)
    assert bits.tolist() == [False, True, True, False]
    # free split never separates equal values; constant input gives all zeros
    _, _, bits = closed_form(w)
    assert bits.tolist() == [True, True, True, False]
    a, b, bits = closed_form(torch.full((5,), 2.0))
    assert not bits.any() and float(a) == float(b) == 2.0
    # two splits of equal error: the sparser one wins
    a, b, bits = closed_form(torch.tensor([-1.0, 0.0, 1.0]))
    assert bits.tolist() == [False, False, True]


def test_closed_form_symmetric_is_xnor():
    g = torch.Generator().manual_seed(1)
    half = torch.randn(50, generator=g).abs() + 0.01
    w = torch.cat([half, -half])[torch.randperm(100, generator=g)]
    alpha, beta, bits = closed_form(w, ones=0.5)
    scale = w.abs().mean()
    torch.testing.assert_close(beta, scale)
    torch.testing.assert_close(alpha, -scale)
    assert torch.equal(bits, w >= 0)


def test_closed_form_per_channel_equals_per_tensor_on_each_channel():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 3, 3, 3, generator=g)
    for ones in (None, 0.1):
        a, b, bits = closed_form(w, ones=ones, dim=0)
        assert a.shape == (6,) and b.shape == (6,)
        for c in range(6):
            ac, bc, bitsc = closed_form(w[c], ones=ones)
            torch.testing.assert_close(a[c], ac)
            torch.testing.assert_close(b[c], bc)
            assert torch.equal(bits[c], bitsc)


def test_closed_form_large_is_fast_and_exact():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(256, 256, 3, 3, generator=g)
    a, b, bits = closed_form(w, ones=0.05)
    assert int(bits.sum()) == math.floor(0.05 * w.numel() + 0.5)
    assert float(w[bits].min()) >= float(w[~bits].max())


@pytest.mark.parametrize(
    "w,kwargs,exc,match",
    [
        (torch.arange(4), {}, TypeError, "floating"),
        ([1.0, 2.0], {}, TypeError, "torch.Tensor"),
        (torch.randn(4), {"ones": 0.0}, ValueError, r"\(0, 1\)"),
        (torch.randn(4), {"ones": 1.0}, ValueError, r"\(0, 1\)"),
        (torch.randn(4), {"ones": float("nan")}, ValueError, r"\(0, 1\)"),
        (torch.tensor([1.0, float("nan")]), {}, ValueError, "NaN or Inf"),
        (torch.tensor([1.0, float("inf")]), {}, ValueError, "NaN or Inf"),
        (torch.empty(0), {}, ValueError, "empty"),
        (torch.randn(4), {"dim": 1}, ValueError, "dim must be"),
        (torch.randn(4), {"ones": "half"}, TypeError, "ones must be"),
    ],
)
def test_closed_form_bad_input(w, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        closed_form(w, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_closed_form_cuda_matches_cpu():
    w = torch.randn(16, 8, 3, 3)
    for ones in (None, 0.05):
        cpu = closed_form(w, ones=ones, dim=0)
        gpu = closed_form(w.cuda(), ones=ones, dim=0)
        for x, y in zip(cpu, gpu, strict=True):
            torch.testing.assert_close(x, y.cpu())


def test_sign_zero_is_plus_one():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 3.0])
    assert sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0, 1.0]
    assert to_bits(x).tolist() == [False, True, True, True, True]
    assert torch.sign(torch.tensor(0.0)) == 0  # why sbnn pins its own sign


def test_entropy_values():
    assert entropy(0.5) == pytest.approx(1.0)
    for p, h in [(0.10, 0.469), (0.05, 0.286), (0.02, 0.141), (0.01, 0.081)]:
        assert entropy(p) == pytest.approx(h, abs=1e-3)
    assert entropy(0.0) == entropy(1.0) == 0.0
    with pytest.raises(ValueError):
        entropy(1.5)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 64, 1000])
def test_pack_bits_native_and_numpy_agree(n):
    rng = np.random.default_rng(n)
    bits = rng.integers(0, 2, n).astype(np.uint8)
    packed = sbnn.pack_bits(bits)
    assert np.array_equal(packed, np.packbits(bits, bitorder="little"))
    assert np.array_equal(sbnn.unpack_bits(packed, n), bits)
    from sbnn_runtime.native import core, native_error

    assert core is not None, native_error
    assert np.array_equal(core.pack_bits(bits), packed)


# --------------------------------------------------------------------------------------------
# the shared binary-weight math: to_bits, group_means, fold_levels, kernel_stats
# --------------------------------------------------------------------------------------------

def test_to_bits_sign_rule_on_torch_and_numpy():
    w = torch.tensor([-1.0, -0.0, 0.0, 1e-30, -1e-30, 2.0])
    want = [False, True, True, True, False, True]  # -0.0 >= 0 too: sign(0) = +1
    assert to_bits(w).tolist() == want
    assert to_bits(w).dtype == torch.bool
    assert to_bits(w.numpy()).tolist() == want and to_bits(w.numpy()).dtype == np.bool_


@pytest.mark.parametrize("seed", range(6))
def test_group_means_match_per_row_brute_force(seed):
    from sbnn.method.primitives import group_means

    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(5, 1 + seed * 3, generator=g)
    bits = torch.rand(rows.shape, generator=g) < 0.3
    bits[0] = False  # an empty 1-group
    bits[1] = True  # an empty 0-group
    alpha, beta = group_means(rows, bits)
    assert alpha.dtype == torch.float64 and alpha.shape == (5,)
    for r in range(5):
        v, b = rows[r].double(), bits[r]
        a = float(v[~b].mean()) if (~b).any() else float(v[b].mean())
        bb = float(v[b].mean()) if b.any() else a
        assert math.isclose(float(alpha[r]), a, rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(float(beta[r]), bb, rel_tol=1e-12, abs_tol=1e-12)
    assert torch.equal(alpha[0], beta[0]) and torch.equal(alpha[1], beta[1])  # exactly
    # no other levels fit a split better: the SSE at the means is the brute-force minimum
    for r in range(2, 5):
        v, b = rows[r].double(), bits[r].double()
        best = sse(rows[r], bits[r])
        q = alpha[r] + (beta[r] - alpha[r]) * b
        assert math.isclose(float(((v - q) ** 2).sum()), best, rel_tol=1e-9, abs_tol=1e-12)
    # one row (1-D) gives 0-dim levels; dtype keeps the caller's precision
    a1, b1 = group_means(rows[2], bits[2], dtype=torch.float32)
    assert a1.shape == () and a1.dtype == torch.float32
    torch.testing.assert_close(a1.double(), alpha[2], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="differ in shape"):
        group_means(rows, bits[:2])


def test_closed_form_levels_are_the_group_means_of_its_split():
    from sbnn.method.primitives import group_means

    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(3))
    for ones, dim in ((None, None), (0.1, None), (0.2, 0), (None, 0)):
        alpha, beta, bits = closed_form(w, ones, dim)
        rows = w.reshape(1, -1) if dim is None else w.reshape(6, -1)
        a, b = group_means(rows, bits.reshape(rows.shape))
        assert torch.equal(alpha.reshape(-1), a.float()) and torch.equal(beta.reshape(-1),
                                                                          b.float())


@pytest.mark.parametrize("per_channel,with_bn,with_bias",
                         list(itertools.product([False, True], repeat=3)))
def test_fold_levels_equals_the_binary_conv_with_batchnorm(per_channel, with_bn, with_bias):
    """eta * conv(x, b) + xi * conv(x, 1) + bias' == BN(conv(x, q) + bias), brute force."""
    import torch.nn.functional as F

    from sbnn.method.primitives import fold_levels

    g = torch.Generator().manual_seed(int(per_channel) * 4 + int(with_bn) * 2 + int(with_bias))
    co, ci = 5, 3
    bits = torch.rand(co, ci, 3, 3, generator=g) < 0.2
    alpha = torch.randn(co if per_channel else (), generator=g, dtype=torch.float64)
    beta = alpha + torch.rand(alpha.shape, generator=g, dtype=torch.float64)
    bias = torch.randn(co, generator=g, dtype=torch.float64) if with_bias else None
    s = torch.rand(co, generator=g, dtype=torch.float64) + 0.5 if with_bn else None
    t = torch.randn(co, generator=g, dtype=torch.float64) if with_bn else None
    eta, xi, b2 = fold_levels(alpha, beta, bias, s, t, channels=co)
    assert eta.shape == xi.shape == b2.shape == (co,) and eta.dtype == torch.float64
    x = torch.randn(2, ci, 7, 7, generator=g, dtype=torch.float64)
    view = (-1, 1, 1, 1)
    a4, d4 = alpha.reshape(-1).expand(co).reshape(view), (beta - alpha).reshape(-1).expand(co)
    q = a4 + d4.reshape(view) * bits
    want = F.conv2d(x, q, bias, padding=1)
    if with_bn:
        want = want * s.view(1, -1, 1, 1) + t.view(1, -1, 1, 1)
    ones = torch.ones(1, ci, 3, 3, dtype=torch.float64)
    got = (eta.view(1, -1, 1, 1) * F.conv2d(x, bits.double(), padding=1)
           + xi.view(1, -1, 1, 1) * F.conv2d(x, ones, padding=1) + b2.view(1, -1, 1, 1))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="lengths differ"):
        fold_levels(torch.zeros(3), torch.zeros(4))


def _kernel_stats_brute(bits):
    b = np.asarray(bits) != 0
    filters = {"filters": b.shape[0],
               "zero_filters": sum(not b[o].any() for o in range(b.shape[0]))}
    if b.ndim != 4:
        return {"kernels": None, "zero_kernels": None, "taps": 1, "spatial": False,
                "storage_bits": b.size, **filters}
    kernels = zero = 0
    storage = 0
    taps = b.shape[2] * b.shape[3]
    for o in range(b.shape[0]):
        for i in range(b.shape[1]):
            kernels += 1
            empty = not b[o, i].any()
            zero += empty
            storage += 1 + (0 if empty else taps)
    spatial = taps > 1
    return {"kernels": kernels, "zero_kernels": zero, "taps": taps, "spatial": spatial,
            "storage_bits": storage if spatial else b.size, **filters}


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (5, 2, 1, 1), (3, 7, 5, 5), (2, 1, 2, 3),
                                   (6, 9), (8,)])
@pytest.mark.parametrize("p", [0.0, 0.05, 0.5, 1.0])
def test_kernel_stats_match_brute_force(shape, p):
    from sbnn.method.primitives import kernel_stats

    g = torch.Generator().manual_seed(len(shape) * 100 + int(p * 10))
    bits = torch.rand(shape, generator=g) < p
    want = _kernel_stats_brute(bits.numpy())
    assert kernel_stats(bits) == want
    assert kernel_stats(bits.numpy().astype(np.uint8)) == want  # numpy 0/1 (export's bits)
    assert kernel_stats(bits.to(torch.uint8)) == want
