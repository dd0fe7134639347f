"""Sub-bit's trained form (``prune.patterns_trained``): the codebook of 2**k kernel patterns is
re-learned during training, every kernel stays a codeword, bits per weight are k/9, the codebook
moves, the masks travel in checkpoints, and the trained network exports to the engine."""

from __future__ import annotations

import pytest
import torch

import sbnn.pipeline.train as strain
from sbnn.method.constraint import sb_layers
from sbnn.pipeline.config import ConfigError, load_config
from sbnn.pipeline.data import write_synthetic_idx
from sbnn.pipeline.runs import load_model
from sbnn.verbs.prune import (
    LayerMasks,
    assign_patterns,
    attach_,
    attached_masks,
    prune_state,
    prune_stats,
    refine_patterns,
)
from sbnn.verbs.prune_config import PruneConfig


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return str(write_synthetic_idx(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=128))


def cfg_for(root, k, *extra):
    # the Sub-bit arm: a dense pm1 BNN (no sparsity target) with 2**k trained patterns
    return load_config(None, [
        f"data.root={root}", "data.batch_size=64", "data.eval_batch_size=128",
        "model.kwargs={width: 8}", "epochs=2", "progress=false", "device=cpu", "optim.lr=0.05",
        "model.domain=pm1", "sparsity.ec=0.5", "sparsity.gamma=0", "sparsity.init=none",
        f"prune.patterns={k}", "prune.patterns_trained=true", *extra])


def _members_match(m, cb):
    kern = m.bits().reshape(-1, cb.shape[1])
    return bool((kern.unsqueeze(1) == cb.unsqueeze(0)).all(2).any(1).all())


def test_config_checks():
    assert PruneConfig(patterns=4, patterns_trained=True).patterns_trained
    with pytest.raises(ValueError, match="needs prune.patterns"):
        PruneConfig(patterns_trained=True)
    with pytest.raises(ValueError, match="true or false"):
        PruneConfig(patterns=4, patterns_trained=1)


def test_refine_moves_a_codeword_towards_its_members():
    torch.manual_seed(0)
    cb = torch.zeros(4, 9, dtype=torch.bool)
    cb[1, :3] = True
    cb[2, 3:6] = True
    cb[3, 6:] = True
    # kernels near codeword 1, but with tap 4 strongly positive in all of them
    w = torch.where(cb[1], 1.0, -1.0).repeat(10, 1)
    w[:, 4] = 2.0
    w = w + 0.01 * torch.randn_like(w)
    new = refine_patterns(w.view(10, 1, 3, 3), cb)
    assert new.shape == cb.shape and not bool(new[0].any())  # size kept, row 0 all-zero
    expect = cb[1].clone()
    expect[4] = True
    # the members' codeword took tap 4; an unused codeword was re-seeded only if a kernel
    # was farther from its codeword than 0 (here every kernel now matches codeword 1)
    assert torch.equal(new[1], expect)
    assert int(assign_patterns(w, new)[0]) == 1


def test_refine_respects_forced_zeros_and_reseeds_unused():
    cb = torch.zeros(3, 9, dtype=torch.bool)
    cb[1, 0] = True
    cb[2, 8] = True  # nobody will use it
    w = -torch.ones(6, 9)
    w[:3, 0] = 1.0  # kernels 0-2 are codeword 1
    w[3:, 1:3] = 1.0  # kernels 3-5 are a pattern not in the codebook
    forced = torch.zeros(6, 9, dtype=torch.bool)
    forced[3:, 2] = True  # ... but tap 2 is forced to 0 there
    new = refine_patterns(w.view(6, 1, 3, 3), cb, forced.view(6, 1, 3, 3))
    assert torch.equal(new[1], cb[1])
    seeded = torch.zeros(9, dtype=torch.bool)
    seeded[1] = True  # the far kernels' pattern with the forced tap cleared
    assert torch.equal(new[2], seeded)


def test_training_keeps_2k_patterns_moves_the_codebook_and_exports(toy_root, tmp_path):
    from sbnn.deploy.export import export
    from sbnn.engine import load as engine_load

    k = 4
    cfg = cfg_for(toy_root, k)
    trainer = strain.Trainer(cfg, out=tmp_path / "run")
    start = {n: attached_masks(m).codebook.clone() for n, m in sb_layers(trainer.model)
             if attached_masks(m) is not None}
    assert start and all(cb.shape[0] <= 2 ** k for cb in start.values())
    trainer.fit()
    model = trainer.model
    moved = 0
    x = torch.randn(2, 1, 28, 28)
    stats = {r["name"]: r for r in prune_stats(model, x)["layers"]}
    for name, m in sb_layers(model):
        lm = attached_masks(m)
        if lm is None:
            continue
        assert lm.trained
        cb = lm.codebook
        assert cb.shape == start[name].shape and cb.shape[0] <= 2 ** k  # the count is kept
        assert not bool(cb[0].any())
        assert _members_match(m, cb)  # every kernel is a codeword
        assert stats[name]["distinct_patterns"] <= 2 ** k
        # Sub-bit's storage: a k-bit index per 3x3 kernel = k/9 bits per weight (+ codebook)
        row = stats[name]
        n_kernels = row["kernels"]
        index_bits = (row["bits_pattern_fixed"] - cb.shape[0] * 9) / n_kernels
        assert index_bits <= k and index_bits / 9 <= k / 9 + 1e-12
        moved += int(not torch.equal(cb, start[name]))
    assert moved >= 1, "no codebook changed during training"
    # the masks (codebook and the trained flag) travel with the checkpoint ...
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    state = ckpt["prune_masks"]
    assert state and all(d["trained"] for d in state.values())
    back = load_model(tmp_path / "run")
    for name, m in sb_layers(back):
        if name in state:
            assert _members_match(m, state[name]["codebook"])
    # ... and the trained network exports: the engine agrees with PyTorch
    model.eval()
    path = tmp_path / "subbit.sbnn"
    export(model, path, (1, 28, 28))
    with torch.no_grad():
        ref = model(x).numpy()
    got = engine_load(path, num_threads=1)(x.numpy())
    assert abs(got - ref).max() <= 1e-3 * max(1.0, abs(ref).max())


def test_fixed_codebook_stays_fixed_in_training():
    torch.manual_seed(0)
    from sbnn import models
    from sbnn.verbs.prune import compute_masks

    model = models.create("fmnist_cnn_flat", width=8)
    masks = compute_masks(model, PruneConfig(patterns=4))
    attach_(model, masks)
    before = {n: lm.codebook.clone() for n, lm in masks.items() if lm.codebook is not None}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        loss = model(torch.randn(8, 1, 28, 28)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, cb in before.items():
        assert torch.equal(masks[n].codebook, cb)
        assert not masks[n].trained
    assert all("trained" in d for d in prune_state(model).values())
    assert LayerMasks.from_dict({"codebook": before[next(iter(before))]}).trained is False


def test_patterns_trained_is_a_config_key(toy_root):
    with pytest.raises(ConfigError, match="needs prune.patterns"):
        load_config(None, [f"data.root={toy_root}", "prune.patterns_trained=true"])
