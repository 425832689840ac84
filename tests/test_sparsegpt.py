"""SparseGPT: exact counts, the OBS step it is built from, less output error than magnitude, restore and export."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_whisper_config
from transformers import WhisperForConditionalGeneration

from prunelib import allocation as alloc
from prunelib import sparsegpt as sgpt
from prunelib.calibration import Example
from prunelib.pruning import compute_masks, pruned


def _hessian(columns: int, tokens: int, seed: int) -> torch.Tensor:
    x = torch.randn(tokens, columns, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, 1] *= 3.0  # one loud input channel, as real activations have
    return x.T @ x / tokens


def _brute_force(weight: torch.Tensor, hessian: torch.Tensor, k: int, percdamp: float) -> tuple:
    """Column-by-column OBS with explicit inverses: the saliency picks k weights, each removal moves the later ones."""
    h = hessian.clone()
    h.diagonal().add_(percdamp * torch.diagonal(h).mean())
    rows, columns = weight.shape
    w = weight.clone()
    # Saliency of weight (r, i): w^2 / [inverse Hessian of the still-free columns i..]_00
    free_inverse = [torch.linalg.inv(h[i:, i:]) for i in range(columns)]
    saliency = torch.stack([w[:, i].square() / free_inverse[i][0, 0] for i in range(columns)], dim=1)
    drop = torch.zeros(rows * columns, dtype=torch.bool)
    drop[torch.argsort(saliency.reshape(-1), stable=True)[:k]] = True
    drop = drop.reshape(rows, columns)
    for r in range(rows):
        for i in range(columns):
            if drop[r, i]:
                inverse = free_inverse[i]
                w[r, i:] -= w[r, i] / inverse[0, 0] * inverse[:, 0]  # the OBS update, exact for the quadratic
    return w, drop


def test_prune_matrix_matches_a_brute_force_obs_sequence():
    weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hessian = _hessian(8, 20, seed=1)
    new, drop = sgpt.prune_matrix(weight, hessian, k=13, blocksize=8, percdamp=0.01)
    expected, expected_drop = _brute_force(weight, hessian, 13, 0.01)
    assert torch.equal(drop, expected_drop)
    assert torch.allclose(new, expected, atol=1e-10)
    assert int((new == 0).sum()) == 13 and torch.all(new[drop] == 0)


@pytest.mark.parametrize("k, blocksize, mask_block", [(0, 4, 4), (37, 4, 2), (96, 8, 8), (50, 16, 16)])
def test_prune_matrix_removes_exactly_k(k, blocksize, mask_block):
    weight = torch.randn(8, 12, generator=torch.Generator().manual_seed(2))
    new, drop = sgpt.prune_matrix(weight, _hessian(12, 30, seed=3), k, blocksize, mask_block=mask_block)
    assert int(drop.sum()) == k and torch.all(new[drop] == 0) and new.dtype == weight.dtype


def test_prune_matrix_refuses_bad_settings():
    weight, hessian = torch.randn(2, 4), _hessian(4, 10, seed=0)
    with pytest.raises(ValueError, match="must divide"):
        sgpt.prune_matrix(weight, hessian, 2, blocksize=4, mask_block=3)
    with pytest.raises(ValueError, match="cannot remove"):
        sgpt.prune_matrix(weight, hessian, 9)
    with pytest.raises(ValueError, match="Hessian has shape"):
        sgpt.prune_matrix(weight, _hessian(5, 10, seed=0), 2)


def test_a_dead_input_channel_does_not_break_the_inverse():
    hessian = _hessian(6, 20, seed=4)
    hessian[2, :] = hessian[:, 2] = 0.0  # an input that never fires
    new, drop = sgpt.prune_matrix(torch.randn(3, 6), hessian, 9)
    assert int(drop.sum()) == 9 and torch.isfinite(new).all()


@pytest.fixture(scope="module")
def model() -> WhisperForConditionalGeneration:
    torch.manual_seed(0)
    config = tiny_whisper_config(d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64)
    return WhisperForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    generator = torch.Generator().manual_seed(5)
    out = []
    for index in range(3):
        ids = torch.randint(3, 64, (10,), generator=generator)
        out.append(Example(f"u{index}", torch.randn(80, 100, generator=generator), ids, torch.cat([ids[1:], ids[:1]])))
    return out


def test_sparsegpt_beats_magnitude_on_every_matrix_and_hits_the_target(model, examples):
    spec = "global:local=0.5"
    result = sgpt.sparsegpt(model, spec, examples, blocksize=16, progress=False, keep_hessians=True)
    params = dict(model.named_parameters())
    magnitude = compute_masks(model, spec)
    assert set(result.weights) == set(magnitude)
    for name, new in result.weights.items():
        base = params[name].detach()
        assert int(result.masks[name].sum()) == round(0.5 * base.numel()) == int((~magnitude[name]).sum())
        by_magnitude = base * magnitude[name]
        ours = sgpt.output_error(base, new, result.hessians[name])
        theirs = sgpt.output_error(base, by_magnitude, result.hessians[name])
        assert ours < theirs, name
    with pruned(model, spec, importance=result.keep_scores(), weights=result.weights) as report:
        assert report.overall_linear == pytest.approx(0.5, abs=1e-12)
        assert all(torch.equal(params[name], new) for name, new in result.weights.items())


def test_sparsegpt_leaves_the_model_as_it_found_it_and_pruned_restores_bit_exactly(model, examples):
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    allocation = alloc.allocate("sparsegpt", model, 0.4, examples=examples)
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    assert allocation.name == "sparsegpt" and allocation.importance_name.startswith("sparsegpt-")
    with pruned(model, allocation.spec, importance=allocation.importance, weights=allocation.weights):
        changed = [name for name, p in model.named_parameters() if not torch.equal(before[name], p)]
        assert changed  # the kept weights were updated, not only masked
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())


def test_sparsegpt_follows_another_allocation_per_matrix(model, examples):
    norms = alloc.example_norms(model, examples)
    allocation = alloc.allocate("sparsegpt+owl", model, 0.4, norms=norms, examples=examples)
    owl = alloc.allocate("owl", model, 0.4, norms=norms)
    assert allocation.name == "sparsegpt+owl" and allocation.spec == owl.spec
    ours = alloc.component_sparsity(alloc.reached_sparsity(model, allocation))
    theirs = alloc.component_sparsity(alloc.reached_sparsity(model, owl))
    assert ours.round(9).equals(theirs.round(9))


def test_sparsegpt_needs_examples_and_refuses_the_embedding(model, examples):
    with pytest.raises(ValueError, match="calibration examples"):
        alloc.allocate("sparsegpt", model, 0.4)
    with pytest.raises(ValueError, match="linear layer weights only"):
        sgpt.sparsegpt(model, "global+embed=0.4", examples, progress=False)


def test_replacement_weights_must_lie_inside_the_spec(model):
    params = dict(model.named_parameters())
    encoder_fc1 = "model.encoder.layers.0.fc1.weight"
    with pytest.raises(ValueError, match="does not select"):
        with pruned(model, "decoder.ffn=0.4", weights={encoder_fc1: torch.zeros_like(params[encoder_fc1])}):
            pass
    before = params[encoder_fc1].detach().clone()
    reversed_order = 1.0 / (before.abs() + 1e-3)  # the smallest weights now the largest
    with pruned(model, "encoder.layers[0].ffn:local=0.5", weights={encoder_fc1: reversed_order}):
        kept = params[encoder_fc1] != 0  # magnitude masks are taken from the replacement, not the original
        assert int((~kept).sum()) == round(0.5 * before.numel())
        assert reversed_order[kept].min() >= reversed_order[~kept].max()
    assert torch.equal(params[encoder_fc1], before)


def test_a_cached_calibration_reads_back_bit_exactly_without_calibrating_again(model, examples, tmp_path, monkeypatch):
    first = sgpt.cached_sparsegpt(model, "global:local=0.4", examples, tmp_path, blocksize=16, progress=False)
    (saved,) = tmp_path.glob("*.pt")
    monkeypatch.setattr(sgpt, "sparsegpt", lambda *args, **kwargs: pytest.fail("calibrated again"))
    again = sgpt.cached_sparsegpt(model, "global:local=0.4", examples, tmp_path, blocksize=16, progress=False)
    assert again.digest() == first.digest() and set(again.masks) == set(first.masks)
    assert all(torch.equal(again.masks[name], mask) for name, mask in first.masks.items())
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    assert saved.exists()


def test_the_cache_key_follows_spec_examples_settings_and_weights(model, examples, tmp_path):
    def run(spec="global:local=0.4", calibration=examples, blocksize=16):
        return sgpt.cached_sparsegpt(model, spec, calibration, tmp_path, blocksize=blocksize, progress=False)

    run()
    run(spec="global:local=0.3")
    run(calibration=examples[:2])
    run(blocksize=8)
    params = dict(model.named_parameters())
    name = "model.encoder.layers.0.fc1.weight"
    before = params[name].detach().clone()
    try:
        params[name].data.mul_(2.0)
        run()
    finally:
        params[name].data.copy_(before)
    assert len(list(tmp_path.glob("*.pt"))) == 5


def test_an_unreadable_or_foreign_cache_file_is_refused_by_name(model, examples, tmp_path):
    sgpt.cached_sparsegpt(model, "global:local=0.4", examples, tmp_path, blocksize=16, progress=False)
    (saved,) = tmp_path.glob("*.pt")
    saved.write_bytes(saved.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{saved.name}: unreadable SparseGPT cache file"):
        sgpt.cached_sparsegpt(model, "global:local=0.4", examples, tmp_path, blocksize=16, progress=False)
    torch.save({"key": "another", "weights": {}, "masks": {}, "seconds": 0.0, "n_examples": 0}, saved)
    with pytest.raises(ValueError, match=f"{saved.name}: not the SparseGPT result"):
        sgpt.cached_sparsegpt(model, "global:local=0.4", examples, tmp_path, blocksize=16, progress=False)


def test_an_allocation_from_the_cache_is_the_one_computed_afresh(model, examples, tmp_path):
    fresh = alloc.allocate("sparsegpt", model, 0.4, examples=examples)
    alloc.allocate("sparsegpt", model, 0.4, examples=examples, cache_dir=tmp_path)
    cached = alloc.allocate("sparsegpt", model, 0.4, examples=examples, cache_dir=tmp_path)
    assert cached.importance_name == fresh.importance_name and cached.spec == fresh.spec
    assert all(torch.equal(cached.importance[name], score) for name, score in fresh.importance.items())
