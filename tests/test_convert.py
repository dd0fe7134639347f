"""Closed-form conversion: exact ones fractions, group-mean levels, global allocation, bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from sbnn import models
from sbnn.method.constraint import SparsityConstraint, sb_layers
from sbnn.method.primitives import closed_form
from sbnn.verbs.convert import (
    ConversionError,
    allocate,
    convert,
    enforce_budget_,
    error_curve,
    quantization_errors,
)


def _fp(seed: int = 0, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return models.create("fmnist_cnn_flat_fp", width=width).eval()


def _levels(m):
    a, b = m.alpha_beta()
    return a.reshape(-1), b.reshape(-1)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.37])
def test_layer_uniform_ones_and_group_means(p):
    fp = _fp()
    model, info = convert(fp, p, return_info=True)
    layers = sb_layers(model)
    assert [n for n, _ in layers] == ["block1.0", "block2.0", "block3.0"]
    for name, m in layers:
        w = info["float_weights"][name]
        bits = m.bits()
        n = bits.numel()
        assert abs(bits.float().mean().item() - p) <= 1 / n
        # the same split and levels as the primitive, and group means by direct computation
        a_ref, b_ref, bits_ref = closed_form(w, ones=p)
        assert torch.equal(bits, bits_ref)
        a, b = _levels(m)
        torch.testing.assert_close(a, w[~bits].mean().reshape(1), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(b, w[bits].mean().reshape(1), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(a, a_ref.reshape(1), rtol=1e-5, atol=1e-7)


def test_channel_uniform_ones_and_group_means():
    fp = _fp(1)
    model, info = convert(fp, 0.05, granularity="channel", return_info=True)
    for name, m in sb_layers(model):
        w = info["float_weights"][name]
        bits = m.bits()
        per = bits.reshape(bits.shape[0], -1)
        n = per.shape[1]
        assert ((per.float().mean(1) - 0.05).abs() <= 1 / n).all()
        a, b = _levels(m)
        assert a.shape == (w.shape[0],)
        wr = w.reshape(w.shape[0], -1)
        for c in range(w.shape[0]):
            torch.testing.assert_close(a[c], wr[c][~per[c]].mean(), rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(b[c], wr[c][per[c]].mean(), rtol=1e-5, atol=1e-7)
        _, _, bits_ref = closed_form(w, ones=0.05, dim=0)
        assert torch.equal(bits, bits_ref)


def test_converted_layer_uses_its_levels_and_trains():
    fp = _fp(2)
    x = torch.randn(4, 1, 28, 28)
    for gran in ("layer", "channel"):
        model = convert(fp, 0.05, granularity=gran).train()
        m = model.block2[0]
        q = m.quantized_weight()
        a, b = m.alpha_beta()
        ref = torch.where(m.bits(), b.reshape(-1, 1, 1, 1) if b.dim() else b,
                          a.reshape(-1, 1, 1, 1) if a.dim() else a)
        torch.testing.assert_close(q.detach(), ref.expand_as(q))
        loss = model(x).square().mean()
        loss.backward()
        assert m.tau.grad is not None and m.weight.grad is not None


def test_error_curve_matches_brute_force():
    torch.manual_seed(3)
    w = torch.randn(13, dtype=torch.float64)
    forced = torch.zeros(13, dtype=torch.bool)
    forced[[2, 7]] = True
    e = error_curve(w, forced)
    assert e.shape == (12,)
    free = (~forced).nonzero().squeeze(1).tolist()
    for k in range(12):
        best = math.inf
        for ones in itertools.combinations(free, k):
            b = torch.zeros(13, dtype=torch.bool)
            b[list(ones)] = True
            if k and w[b].mean() < w[~b].mean():
                continue  # bit 1 is the larger level (beta >= alpha)
            q = torch.where(b, w[b].mean() if k else 0.0, w[~b].mean())
            best = min(best, float(((w - q) ** 2).sum()))
        if best == math.inf:  # no split has beta >= alpha: the curve holds the top-k split
            b = torch.zeros(13, dtype=torch.bool)
            b[torch.tensor(free)[torch.argsort(w[free], descending=True)[:k]]] = True
            best = float(((w - torch.where(b, w[b].mean(), w[~b].mean())) ** 2).sum())
        assert e[k] == pytest.approx(best, rel=1e-9, abs=1e-9)


def _dp(curves, budget, lo, hi):
    best = {0: (0.0, [])}
    for g, e in enumerate(curves):
        nxt = {}
        for used, (val, ks) in best.items():
            for k in range(lo[g], hi[g] + 1):
                u = used + k
                if u > budget:
                    break
                cand = val + e[k]
                if u not in nxt or cand < nxt[u][0]:
                    nxt[u] = (cand, ks + [k])
        best = nxt
    return best[budget]


@pytest.mark.parametrize("seed", range(6))
def test_allocate_never_worse_than_uniform_and_near_optimal(seed):
    g = torch.Generator().manual_seed(seed)
    curves, lo, hi, start = [], [], [], []
    for i in range(4):
        n = 6 + 3 * i
        # heavy tails make the curves non-convex now and then
        w = torch.randn(n, generator=g) * torch.rand(n, generator=g) ** 3 * (1 + i)
        e = error_curve(w)
        curves.append(e)
        lo.append(1)
        hi.append(n)
        start.append(max(1, round(0.2 * n)))
    budget = sum(start)
    ks = allocate(curves, budget, lo, hi, start=start)
    assert sum(ks) == budget and all(a <= k <= b for a, k, b in zip(lo, ks, hi, strict=True))
    total = sum(e[k] for e, k in zip(curves, ks, strict=True))
    assert total <= sum(e[k] for e, k in zip(curves, start, strict=True)) + 1e-12
    opt, _ = _dp(curves, budget, lo, hi)
    assert total <= opt * 1.05 + 1e-9


@pytest.mark.parametrize("gran", ["layer", "channel"])
def test_global_never_worse_than_uniform(gran):
    for seed in range(2):
        fp = _fp(seed)
        mu, iu = convert(fp, 0.05, gran, "uniform", return_info=True)
        mg, ig = convert(fp, 0.05, gran, "global", return_info=True)
        eu = sum(r["sse"] for r in quantization_errors(iu["float_weights"], mu))
        eg = sum(r["sse"] for r in quantization_errors(ig["float_weights"], mg))
        assert eg <= eu * (1 + 1e-9)
        ones_u = sum(int(m.bits().sum()) for _, m in sb_layers(mu))
        ones_g = sum(int(m.bits().sum()) for _, m in sb_layers(mg))
        assert ones_u == ones_g  # one budget, the same total


def test_binary_twin_with_float_weights_converts_the_same():
    fp = _fp(4)
    twin = models.create("fmnist_cnn_flat", width=16)
    missing, unexpected = twin.load_state_dict(fp.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(("tau", "phi")) for k in missing)
    a = convert(fp, 0.1)
    b = convert(twin, 0.1)
    for (_, ma), (_, mb) in zip(sb_layers(a), sb_layers(b), strict=True):
        assert torch.equal(ma.bits(), mb.bits())
        torch.testing.assert_close(ma.quantized_weight(), mb.quantized_weight())
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("ones", [0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_bad_ones(ones):
    with pytest.raises(ConversionError, match="ones"):
        convert(_fp(), ones)


def test_bad_options_and_small_layer():
    fp = _fp()
    with pytest.raises(ConversionError, match="granularity"):
        convert(fp, 0.05, granularity="kernel")
    with pytest.raises(ConversionError, match="allocation"):
        convert(fp, 0.05, allocation="best")
    tiny = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(ConversionError, match=r"'0' has 12 weights.*rounds to 0"):
        convert(tiny, 0.01)
    with pytest.raises(ConversionError, match="rounds to 0"):
        convert(fp, 0.005, granularity="channel")  # block1 channels have 8 * 9 = 72 weights
    with pytest.raises(ConversionError, match="no conv or linear"):
        convert(nn.Sequential(nn.ReLU()), 0.1)


def test_enforce_budget_keeps_ones_at_or_under_target():
    fp = _fp(5)
    model, info = convert(fp, 0.05, return_info=True)
    cons = SparsityConstraint(model, ec=0.05, gamma=0.07)
    with torch.no_grad():
        for _, m in sb_layers(model):
            m.weight.add_(0.3 * torch.rand_like(m.weight))  # many new 1-bits
    assert float(cons.ones_fraction()) > 0.1
    off = enforce_budget_(model, info["budgets"], "layer")
    assert off > 0
    for name, m in sb_layers(model):
        assert int(m.bits().sum()) <= info["budgets"][name][0]
    assert float(cons.ones_fraction()) <= 0.05 + 1e-9


def test_quantization_errors_rows():
    fp = _fp()
    model, info = convert(fp, 0.05, return_info=True)
    rows = quantization_errors(info["float_weights"], model)
    assert [r["name"] for r in rows] == ["block1.0", "block2.0", "block3.0"]
    for r in rows:
        assert 0 < r["relative"] < 1 and np.isfinite(r["sse"])


# --------------------------------------------------------------------------------------------
# sbnn convert (command line)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fp_checkpoint(tmp_path_factory):
    from sbnn.pipeline.config import Config, to_dict
    from sbnn.pipeline.data import write_synthetic_idx

    root = tmp_path_factory.mktemp("conv")
    data = write_synthetic_idx(root / "data", n_train=256, n_test=128)
    cfg = Config()
    cfg.model.name = "fmnist_cnn_flat_fp"
    cfg.model.kwargs = {"width": 8}
    cfg.data.root = str(data)
    cfg.data.batch_size = 64
    cfg.data.eval_batch_size = 128
    torch.manual_seed(0)
    model = models.create("fmnist_cnn_flat_fp", width=8)
    ckpt = {"model": model.state_dict(), "config": to_dict(cfg), "num_classes": 10,
            "in_chans": 1, "epoch": 1, "sbnn_format": 1}
    path = root / "fp.pt"
    torch.save(ckpt, path)
    return root, path, ckpt


def _cli(*argv):
    from sbnn import cli

    return cli.main(["convert", *map(str, argv)])


def test_cli_convert_writes_a_run_folder(fp_checkpoint, capsys):
    import json

    from sbnn.pipeline.runs import load_model

    root, path, _ = fp_checkpoint
    out = root / "run"
    rc = _cli(path, "--ones", 0.05, "--finetune-epochs", 1, "--prune-kernels", 0.8,
              "--no-progress", "--threads", 1, "--out", out)
    assert rc == 0, capsys.readouterr().err
    for f in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "report.json"):
        assert (out / f).is_file(), f
    rep = json.loads((out / "report.json").read_text())
    c = rep["convert"]
    assert set(c["accuracy"]) == {"full_precision", "converted", "converted_bn_recalibrated",
                                  "finetuned", "from_scratch"}
    assert rep["ones_fraction"] <= 0.05 + 1e-9  # fine-tuning kept p at or under the target
    assert [r["name"] for r in c["quantization_error_converted"]] == [
        "block1.0", "block2.0", "block3.0"]
    assert c["pruning"]["total"]["ones"] == round(rep["ones_fraction"] * c["pruning"]["total"]["n"])
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]
    model = load_model(out)  # evaluate/export's loader takes the folder unchanged
    assert len(sb_layers(model)) == 3
    assert not list(root.glob(".run.tmp-*"))
    # the same folder again: refused, nothing changed
    assert _cli(path, "--ones", 0.05, "--out", out) == 2
    assert "not empty" in capsys.readouterr().err

    # the from-scratch comparison reads a train run's report
    out2 = root / "run2"
    assert _cli(path, "--ones", 0.1, "--allocation", "global", "--granularity", "layer",
                "--bn-batches", 2, "--from-scratch", out, "--no-progress", "--out", out2) == 0
    rep2 = json.loads((out2 / "report.json").read_text())
    assert rep2["convert"]["accuracy"]["converted_bn_recalibrated"] is not None
    assert rep2["convert"]["accuracy"]["from_scratch"] == rep["test_accuracy"]
    assert "from scratch" in capsys.readouterr().out


def _assert_refused(capsys, root, out, match, *argv):
    assert _cli(*argv, "--no-progress", "--out", out) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert not out.exists()
    assert not list(root.glob(f".{out.name}.tmp-*"))


def test_cli_bad_input_leaves_nothing(fp_checkpoint, capsys, tmp_path):
    root, path, ckpt = fp_checkpoint
    out = tmp_path / "bad"
    _assert_refused(capsys, tmp_path, out, "open interval", path, "--ones", 1.5)
    _assert_refused(capsys, tmp_path, out, "open interval", path, "--ones", 0)
    _assert_refused(capsys, tmp_path, out, "rounds to 0", path, "--ones", 0.00001)
    _assert_refused(capsys, tmp_path, out, "no checkpoint", tmp_path / "none.pt", "--ones", 0.05)
    bad = dict(ckpt)
    del bad["in_chans"]
    torch.save(bad, tmp_path / "nokeys.pt")
    _assert_refused(capsys, tmp_path, out, "lacks the key(s) ['in_chans']",
                    tmp_path / "nokeys.pt", "--ones", 0.05)
    unknown = {**ckpt, "config": {**ckpt["config"], "model": {**ckpt["config"]["model"],
                                                              "name": "lenet_fp"}}}
    torch.save(unknown, tmp_path / "unknown.pt")
    _assert_refused(capsys, tmp_path, out, "unknown architecture 'lenet_fp'",
                    tmp_path / "unknown.pt", "--ones", 0.05)
    binary = {**ckpt, "config": {**ckpt["config"], "model": {**ckpt["config"]["model"],
                                                             "name": "fmnist_cnn"}}}
    torch.save(binary, tmp_path / "binary.pt")
    _assert_refused(capsys, tmp_path, out, "already a sparse-binary",
                    tmp_path / "binary.pt", "--ones", 0.05)
    _assert_refused(capsys, tmp_path, out, "report.json", path, "--ones", 0.05,
                    "--from-scratch", tmp_path)


def test_recalibrate_batchnorm_matches_batch_statistics():
    import copy

    from sbnn.verbs.convert import recalibrate_batchnorm_

    model = convert(_fp(8), 0.05)
    x = torch.randn(32, 1, 28, 28)
    twin = copy.deepcopy(model).train()
    with torch.no_grad():  # what block1's BatchNorm sees in training mode, on this batch
        h = twin.block1[0](twin.stem(x))
    recalibrate_batchnorm_(model, [(x, None)])
    bn = model.block1[1]
    torch.testing.assert_close(bn.running_mean, h.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, h.var((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training


def test_cli_channel_granularity_run_loads_with_load_run(fp_checkpoint, capsys):
    from sbnn.pipeline.convert_run import load_run

    root, path, _ = fp_checkpoint
    out = root / "run_channel"
    assert _cli(path, "--ones", 0.1, "--granularity", "channel", "--prune-filters", 0.25,
                "--no-progress", "--out", out) == 0, capsys.readouterr().err
    model = load_run(out)
    ck = torch.load(out / "last.pt", weights_only=False)
    assert model.block2[0].tau.shape == (8, 1, 1, 1)
    assert set(ck["prune_masks"]) == {"block1.0", "block2.0", "block3.0"}
    assert (out / "shrunk_model.pt").is_file()
    import json

    shrink = json.loads((out / "report.json").read_text())["convert"]["shrink"]
    assert shrink["removed_filters"] == {"block3.0": 4}
    assert shrink["max_abs_output_diff"] < 1e-4
    for (_, a), (_, b) in zip(sb_layers(model), sb_layers(load_run(out)), strict=True):
        assert torch.equal(a.bits(), b.bits())


@pytest.mark.parametrize("field,value,match", [
    ("ones", 1.0, "open interval"), ("ones", True, "open interval"),
    ("granularity", "row", "--granularity must be one of layer, channel"),
    ("allocation", "best", "--allocation must be one of uniform, global"),
    ("finetune_epochs", -1, "--finetune-epochs must be an integer >= 0"),
    ("bn_batches", 1.5, "--bn-batches must be an integer >= 0"),
    ("train_subset", 0, "--train-subset must be an integer >= 1"),
    ("threads", 0, "--threads must be an integer >= 1"),
    ("gamma", 1.0, "--gamma must be a share in [0, 1)"),
    ("lr", 0.0, "--lr must be > 0"),
    ("prune", {"kernels": 0.5}, "prune must be a PruneConfig"),
])
def test_convert_job_validates_each_field(field, value, match):
    from sbnn.pipeline.convert_run import ConvertJob

    with pytest.raises(ConversionError, match=match.replace("[", r"\[").replace(")", r"\)")):
        ConvertJob("fp.pt", "out", **{"ones": 0.05, field: value})
    job = ConvertJob("fp.pt", "out", 0.05)  # the defaults are valid and match the CLI's
    assert (job.granularity, job.allocation, job.finetune_epochs, job.gamma) == (
        "layer", "uniform", 0, 0.07)


def test_run_convert_from_python_matches_the_cli(fp_checkpoint, capsys):
    from sbnn.pipeline.convert_run import ConvertJob, run_convert
    from sbnn.verbs.prune import PruneConfig

    root, path, _ = fp_checkpoint
    rep = run_convert(ConvertJob(path, root / "py", 0.1, prune=PruneConfig(kernels=0.5),
                                 finetune_epochs=1, threads=1, progress=False))
    assert _cli(path, "--ones", 0.1, "--prune-kernels", 0.5, "--finetune-epochs", 1,
                "--threads", 1, "--no-progress", "--out", root / "cli") == 0
    a = torch.load(root / "py" / "last.pt", weights_only=False)["model"]
    b = torch.load(root / "cli" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [__import__("json").loads(x) for x in (root / "py" / "metrics.jsonl").read_text()
            .splitlines()]
    # the fine-tuning epoch went through the trainer's loop: its row has the trainer's keys
    assert {"train_loss", "train_accuracy", "penalty"} <= set(rows[1])
    assert rep["convert"]["finetune_epochs"] == 1
    with pytest.raises(TypeError, match="ConvertJob"):
        run_convert(path)
