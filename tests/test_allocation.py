"""Allocators: matched overall sparsity, caps, seeds, Wanda scores, OWL and the paper's table."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import tiny_whisper_config
from transformers import WhisperForConditionalGeneration

from prunelib import allocation as alloc
from prunelib.calibration import Example
from prunelib.pruning import compute_masks, resolve

SENSITIVE = "decoder.layers[1].ffn"


@pytest.fixture(scope="module")
def model() -> WhisperForConditionalGeneration:
    """A tiny Whisper with matrices large enough that 0.1 percentage point is a few weights."""
    torch.manual_seed(0)
    config = tiny_whisper_config(d_model=64, encoder_ffn_dim=256, decoder_ffn_dim=256,
                                 encoder_layers=3, decoder_layers=3)
    return WhisperForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def norms(model) -> dict[str, torch.Tensor]:
    """Input norms from two random teacher-forced batches."""
    generator = torch.Generator().manual_seed(1)
    batches = [{"input_features": torch.randn(1, 80, 100, generator=generator),
                "decoder_input_ids": torch.randint(3, 64, (1, 9), generator=generator)} for _ in range(2)]
    return alloc.collect_input_norms(model, batches)


@pytest.fixture(scope="module")
def scores(model) -> pd.DataFrame:
    """Made-up component scores: all equal but one component a hundred times more sensitive."""
    table = pd.DataFrame({"fisher": 1.0, "gradient": 1.0}, index=list(alloc.tensors_by_component(model)))
    table.loc[SENSITIVE] = 100.0
    return table


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    """Two random teacher-forced examples, for SparseGPT."""
    generator = torch.Generator().manual_seed(2)
    ids = [torch.randint(3, 64, (9,), generator=generator) for _ in range(2)]
    return [Example(f"u{i}", torch.randn(80, 100, generator=generator), x, x) for i, x in enumerate(ids)]


@pytest.mark.parametrize("name", alloc.MATCHED)
@pytest.mark.parametrize("target", [0.2, 0.5])
def test_every_matched_allocator_hits_the_target(model, norms, scores, examples, name, target):
    curves = _curves(model, lambda label, s: s * (2.0 if "ffn" in label else 1.0))
    allocation = alloc.allocate(name, model, target, scores=scores, norms=norms, seed=0, examples=examples,
                                curves=curves)
    report = alloc.reached_sparsity(model, allocation)
    assert abs(report.overall_linear - target) < 0.001  # 0.1 percentage point
    assert report.overall_weights < report.overall_linear or name == "global+embed"


def test_global_with_embedding_solves_its_pool_sparsity(model):
    allocation = alloc.global_magnitude(model, 0.4, embed=True)
    assert allocation.spec.startswith("global+embed=") and allocation.spec != "global+embed=0.4"
    embed = alloc.component_sparsity(alloc.reached_sparsity(model, allocation))["decoder.embed"]
    assert embed > 0  # the tied embedding is pruned on top of the linear target
    assert "decoder.embed" not in alloc.component_sparsity(
        alloc.reached_sparsity(model, alloc.global_magnitude(model, 0.4))
    )


def test_measure_restores_the_weights(model):
    before = {name: p.clone() for name, p in model.named_parameters()}
    alloc.reached_sparsity(model, alloc.uniform(model, 0.5))
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())


@pytest.mark.parametrize("method", alloc.SCORE_METHODS)
def test_sensitivity_aware_respects_cap_and_spares_the_sensitive(model, scores, method):
    allocation = alloc.sensitivity_aware(model, 0.5, scores[method], method=method, cap=0.6)
    sparsity = alloc.component_sparsity(alloc.reached_sparsity(model, allocation))
    assert sparsity.max() <= 0.6 + 1e-3  # per-matrix rounding only
    others = sparsity.drop(SENSITIVE)
    assert sparsity[SENSITIVE] < others.min()


def test_sensitivity_aware_cap_binds_and_rejects_infeasible_targets(model, scores):
    free = scores["fisher"].copy()
    free[:] = 1.0
    free["encoder.layers[0].ffn"] = 0.0  # costless: greedy would prune it fully without the cap
    allocation = alloc.sensitivity_aware(model, 0.3, free, cap=0.5)
    sparsity = alloc.component_sparsity(alloc.reached_sparsity(model, allocation))
    assert sparsity["encoder.layers[0].ffn"] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="cap"):
        alloc.sensitivity_aware(model, 0.8, free, cap=0.7)
    with pytest.raises(ValueError, match="no fisher score"):
        alloc.sensitivity_aware(model, 0.3, free.drop("encoder.layers[0].ffn"))


def test_random_allocation_is_reproducible_by_seed(model):
    def masks(seed: int) -> dict[str, torch.Tensor]:
        allocation = alloc.random_allocation(model, 0.5, seed)
        return compute_masks(model, allocation.spec, allocation.importance)

    first, again, other = masks(0), masks(0), masks(1)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert any(not torch.equal(first[name], other[name]) for name in first)
    uniform = compute_masks(model, alloc.uniform(model, 0.5).spec)
    # Same number of weights per matrix as uniform magnitude pruning, different weights.
    assert all(int(first[name].sum()) == int(uniform[name].sum()) for name in first)


def test_wanda_scores_have_weight_shapes_and_change_the_masks(model, norms):
    params = dict(model.named_parameters())
    names = [info.name for info in alloc.linear_tensors(model)]
    assert sorted(norms) == sorted(names)
    assert all(norms[name].shape == (params[name].shape[1],) and (norms[name] > 0).all() for name in names)
    raw = alloc.wanda_importance(model, norms, per_row=False)
    assert all(raw[name].shape == params[name].shape for name in names)
    allocation = alloc.wanda(model, 0.5, norms)
    wanda_masks = compute_masks(model, allocation.spec, allocation.importance)
    magnitude = compute_masks(model, alloc.uniform(model, 0.5).spec)
    assert any(not torch.equal(wanda_masks[name], magnitude[name]) for name in names)
    # Per-row selection: every output row keeps floor or ceil of half its inputs.
    for name in names:
        kept = wanda_masks[name].sum(1)
        half = params[name].shape[1] / 2
        assert ((kept >= int(half)) & (kept <= int(half) + 1)).all()


def test_owl_gives_outlier_layers_lower_sparsity(model, norms):
    # Flat activations everywhere except one input channel of decoder layer 2 with outliers.
    spiked = {name: torch.ones_like(norm) for name, norm in norms.items()}
    for name in spiked:
        if name.startswith("model.decoder.layers.2."):
            spiked[name][0] = 20.0
    ratios = alloc.outlier_ratios(model, spiked)
    assert ratios.idxmax() == "decoder.layers[2]"
    allocation = alloc.owl(model, 0.5, spiked, lam=0.1)
    sparsity = alloc.component_sparsity(alloc.reached_sparsity(model, allocation))
    decoder2 = sparsity[[c for c in sparsity.index if c.startswith("decoder.layers[2].")]]
    assert decoder2.max() < sparsity.drop(decoder2.index).min()
    assert sparsity.max() - sparsity.min() == pytest.approx(0.2, abs=0.01)  # spread 2 lam


@pytest.mark.parametrize("layers", [2, 3, 6])
def test_paper_schedule_resolves_on_tiny_models(layers):
    torch.manual_seed(0)
    tiny = WhisperForConditionalGeneration(tiny_whisper_config(decoder_layers=layers)).eval()
    allocation = alloc.paper_schedule(tiny)
    assert allocation.target is None
    selected = [name for _, names in resolve(allocation.spec, tiny) for name in names]
    assert any("embed_tokens" in name for name in selected) and any("conv1" in name for name in selected)
    sparsity = alloc.component_sparsity(alloc.reached_sparsity(tiny, allocation))
    assert sparsity["encoder.layers[0].ffn"] == pytest.approx(0.5, abs=0.01)
    assert sparsity[f"decoder.layers[{layers - 1}].ffn"] == pytest.approx(0.30, abs=0.01)


def test_allocate_rejects_unknown_names_and_missing_inputs(model):
    with pytest.raises(ValueError, match="unknown allocator"):
        alloc.allocate("magic", model, 0.4)
    with pytest.raises(ValueError, match="norms"):
        alloc.allocate("wanda", model, 0.4)
    with pytest.raises(ValueError, match="fisher"):
        alloc.allocate("sensitivity-fisher", model, 0.4)


def _curves(model, cost_of) -> pd.DataFrame:
    """Made-up damage curves: every group's damage at 20/40/60/80 % from `cost_of(label, sparsity)`."""
    return pd.DataFrame([{"component": label, "selector": selector, "sparsity": s, "damage": cost_of(label, s)}
                         for label, selector in alloc.empirical_groups(model).items() for s in (0.2, 0.4, 0.6, 0.8)])


@pytest.mark.parametrize("target", [0.1, 0.35, 0.6])
def test_empirical_hits_the_target_and_spares_the_group_that_hurts(model, target):
    curves = _curves(model, lambda label, s: (50.0 if label == "decoder ffn (late)" else 1.0) * s)
    report = alloc.reached_sparsity(model, alloc.allocate("empirical", model, target, curves=curves, cap=0.7))
    assert abs(report.overall_linear - target) < 0.001
    sparsity = alloc.component_sparsity(report)  # the 3-layer model's late third is its last layer
    fragile = sparsity.get("decoder.layers[2].ffn", 0.0)  # absent: never pruned
    assert fragile < target and fragile <= sparsity.min()


def test_empirical_sees_past_a_steep_first_step(model):
    # One group costs 3 points at 20 % and almost nothing more up to 80 %; the others cost 10 points
    # per unit of sparsity. Step by step the first 20 % looks dearest, but on the convex envelope
    # (3.15 points for 80 %) it is the cheapest group by far, so it is pruned first, to the cap.
    odd = "encoder ffn (early)"
    steep = {0.2: 3.0, 0.4: 3.05, 0.6: 3.1, 0.8: 3.15}
    curves = _curves(model, lambda label, s: steep[s] if label == odd else 10.0 * s)
    sparsity = alloc.component_sparsity(alloc.reached_sparsity(model, alloc.empirical(model, 0.3, curves, cap=0.7)))
    assert sparsity["encoder.layers[0].ffn"] == pytest.approx(0.7, abs=1e-3)  # step by step it would get 0


def test_empirical_refuses_curves_that_miss_a_group_or_the_target(model):
    curves = _curves(model, lambda label, s: s)
    with pytest.raises(ValueError, match="cover no group"):
        alloc.empirical(model, 0.3, curves[curves["component"] != "decoder ffn (late)"])
    with pytest.raises(ValueError, match="beyond the measured curves"):
        alloc.empirical(model, 0.5, curves[curves["sparsity"] <= 0.4])
    with pytest.raises(ValueError, match="damage curves"):
        alloc.allocate("empirical", model, 0.3)
