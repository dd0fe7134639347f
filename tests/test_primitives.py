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
