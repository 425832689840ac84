"""Sensitivity scores: per-sample Fisher and mean gradient against brute force, on a tiny Whisper."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from prunelib import calibration, gradients, reliability
from prunelib import sensitivity as sens
from prunelib.components import list_components
from prunelib.corpora import Corpus, Utterance
from prunelib.pruning import pruned


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine thread hand-offs cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _examples(n: int, seed: int = 0) -> list[calibration.Example]:
    """Random teacher-forcing examples for the tiny Whisper (100 mel frames, vocab 64)."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        features = torch.randn(80, 100, generator=generator)
        text = torch.randint(4, 64, (3 + i % 3,), generator=generator).tolist()
        examples.append(calibration.make_example(f"u{i}", features, prefix=[1, 3], text_ids=text, eos_id=2))
    return examples


def _per_sample_grads(model: nn.Module, examples: list[calibration.Example]) -> list[dict[str, torch.Tensor]]:
    """Each example's gradient, computed separately with autograd.grad (no accumulation)."""
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(True)  # Whisper freezes its encoder positions; measure() scores them anyway
    grads = []
    for example in examples:
        loss = calibration.example_loss(model, example)
        grads.append(
            dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True), strict=True))
        )
    return [{name: g if g is not None else torch.zeros_like(params[name]) for name, g in row.items()} for row in grads]


def test_make_example_scores_text_and_end_token_only(tiny_whisper):
    example = _examples(1)[0]
    assert example.decoder_input_ids.shape == example.labels.shape
    assert example.labels[0] == -100 and (example.labels[1:] != -100).all()  # one prompt token before the text
    assert example.labels[-1] == 2 and torch.equal(example.labels[1:-1], example.decoder_input_ids[2:])
    logits = tiny_whisper(input_features=example.input_features[None],
                          decoder_input_ids=example.decoder_input_ids[None]).logits[0]
    manual = nn.functional.cross_entropy(logits[1:], example.labels[1:])
    assert torch.allclose(calibration.example_loss(tiny_whisper, example), manual)


def test_every_linear_weight_scored_in_exactly_one_component(tiny_whisper):
    measurement = gradients.measure_gradients(tiny_whisper, _examples(3), progress=False)
    scores = gradients.tensor_scores(measurement)
    infos = list_components(tiny_whisper)
    assert set(scores.index) == {info.name for info in infos}
    assert scores[list(gradients.METHODS)].notna().all().all()
    linear = [info for info in infos if info.prunable]
    assert linear and all(scores.loc[info.name, "fisher"] > 0 for info in linear)
    components = sens.component_scores(tiny_whisper, scores)
    assert components["component"].is_unique
    assert components["numel"].sum() == sum(p.numel() for p in tiny_whisper.parameters())
    owners = {info.name: info.component for info in infos}
    assert all(owners[info.name] in set(components["component"]) for info in linear)


def test_cross_attention_is_never_labelled_encoder(tiny_whisper):
    measurement = gradients.measure_gradients(tiny_whisper, _examples(2), progress=False)
    components = sens.component_scores(tiny_whisper, gradients.tensor_scores(measurement))
    cross = components[components["kind"] == "cross_attn"]
    assert len(cross) == tiny_whisper.config.decoder_layers
    assert (cross["stack"] == "decoder").all() and cross["component"].str.startswith("decoder.layers[").all()
    assert not components.loc[components["stack"] == "encoder", "kind"].eq("cross_attn").any()
    groups = sens.group_scores(tiny_whisper, components)
    assert set(groups.loc[groups["kind"] == "cross_attn", "stack"]) == {"decoder"}


def test_fisher_and_gradient_match_brute_force(tiny_whisper):
    examples = _examples(4)
    grads = _per_sample_grads(tiny_whisper, examples)
    measurement = gradients.measure_gradients(tiny_whisper, examples, sizes=[2], progress=False)
    params = dict(tiny_whisper.named_parameters())
    for size in (2, 4):
        scores = gradients.tensor_scores(measurement, size)
        for name, w in params.items():
            per_sample = torch.stack([g[name] for g in grads[:size]])
            mean_grad = per_sample.mean(0)
            fisher = per_sample.square().mean(0)  # mean of squares, not square of the mean
            expected = {"gradient": mean_grad.abs().mean(), "fisher": fisher.mean(),
                        "taylor": (w * mean_grad).abs().mean(), "obd": (0.5 * fisher * w.square()).mean()}
            for method, value in expected.items():
                expected_value = pytest.approx(value.item(), rel=1e-4, abs=1e-12)
                assert scores.loc[name, method] == expected_value, (size, name, method)
    # The empirical Fisher is not the squared batch gradient.
    assert not np.allclose(scores["fisher"], scores["gradient"] ** 2)


@pytest.mark.parametrize("chunk_size", [2, 3])
def test_vmapped_per_sample_gradients_match_the_loop(tiny_whisper, chunk_size):
    # Five examples of three lengths: chunks pad their decoder inputs, and 5 is not a multiple of either chunk.
    examples = _examples(5)
    loop = gradients.measure_gradients(tiny_whisper, examples, sizes=[2], keep_per_weight=True, progress=False)
    attention = tiny_whisper.config._attn_implementation
    vmapped = gradients.measure_gradients(
        tiny_whisper, examples, sizes=[2], keep_per_weight=True, progress=False, chunk_size=chunk_size
    )
    assert tiny_whisper.config._attn_implementation == attention  # switched to eager only while vmapping
    np.testing.assert_allclose(vmapped.losses, loop.losses, rtol=1e-5)
    pd.testing.assert_frame_equal(vmapped.sq_sums, loop.sq_sums, rtol=1e-4)
    pd.testing.assert_frame_equal(vmapped.obd_sums, loop.obd_sums, rtol=1e-4)
    for size in (2, 5):
        pd.testing.assert_frame_equal(
            gradients.tensor_scores(vmapped, size), gradients.tensor_scores(loop, size), rtol=1e-4
        )
    for name, fisher in loop.fisher_diag.items():
        assert torch.allclose(vmapped.fisher_diag[name], fisher, rtol=1e-4, atol=1e-12), name
    assert all(not p.requires_grad or p.grad is None for p in tiny_whisper.parameters())


def test_chunk_size_must_be_positive(tiny_whisper):
    with pytest.raises(ValueError, match="chunk_size"):
        gradients.measure_gradients(tiny_whisper, _examples(2), progress=False, chunk_size=0)


def test_linear_scores_of_any_subset(tiny_whisper):
    examples = _examples(4)
    measurement = gradients.measure_gradients(tiny_whisper, examples, progress=False)
    alone = gradients.measure_gradients(tiny_whisper, [examples[3], examples[1]], progress=False)
    subset = gradients.linear_scores(measurement, ["u3", "u1"])
    pd.testing.assert_frame_equal(subset, gradients.tensor_scores(alone)[["fisher", "obd"]], rtol=1e-5)


def test_weight_importance_averages_to_tensor_scores(tiny_whisper):
    measurement = gradients.measure_gradients(tiny_whisper, _examples(3), keep_per_weight=True, progress=False)
    scores = gradients.tensor_scores(measurement)
    params = dict(tiny_whisper.named_parameters())
    for method in ("taylor", "obd"):
        importance = gradients.weight_importance(tiny_whisper, measurement, method)
        assert set(importance) == set(params)
        for name, values in importance.items():
            assert values.shape == params[name].shape and not values.requires_grad
            assert values.double().mean().item() == pytest.approx(scores.loc[name, method], rel=1e-4, abs=1e-12)
        with pruned(tiny_whisper, "decoder.ffn=0.5", importance=importance) as report:
            assert report.items[0]["achieved"] == pytest.approx(0.5, abs=0.01)


def test_scores_deterministic_and_model_untouched(tiny_whisper):
    tiny_whisper.model.encoder.conv1.weight.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in tiny_whisper.named_parameters()}
    before = {name: p.detach().clone() for name, p in tiny_whisper.named_parameters()}
    first = gradients.tensor_scores(gradients.measure_gradients(tiny_whisper, _examples(3), progress=False))
    second = gradients.tensor_scores(gradients.measure_gradients(tiny_whisper, _examples(3), progress=False))
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    assert first.loc["model.encoder.conv1.weight", "fisher"] > 0  # scored even though frozen
    for name, p in tiny_whisper.named_parameters():
        assert torch.equal(p, before[name]), name
        assert p.requires_grad == flags[name] and p.grad is None
    assert not tiny_whisper.training


def _corpus(speakers: list[str | None]) -> Corpus:
    utterances = [Utterance(id=f"{i:03d}", reference="HELLO", speaker=s) for i, s in enumerate(speakers)]
    return Corpus(name="librispeech:test-other", utterances=utterances, source="memory")


def test_split_calibration_speaker_disjoint_and_seeded():
    corpus = _corpus([f"s{i % 6}" for i in range(30)])
    pool, evaluation = calibration.split_calibration(corpus, 2, seed=0)
    cal_speakers = {u.speaker for u in pool.utterances}
    assert len(cal_speakers) == 2 and not cal_speakers & {u.speaker for u in evaluation.utterances}
    assert len(pool) + len(evaluation) == len(corpus)
    again, _ = calibration.split_calibration(corpus, 2, seed=0)
    assert [u.id for u in again.utterances] == [u.id for u in pool.utterances]
    others = {
        frozenset(u.speaker for u in calibration.split_calibration(corpus, 2, seed=s)[0].utterances) for s in range(10)
    }
    assert len(others) > 1  # the seed chooses
    with pytest.raises(ValueError):
        calibration.split_calibration(corpus, 6, seed=0)  # nothing left to evaluate on


def test_split_calibration_utterance_disjoint_without_speakers():
    corpus = _corpus([None] * 5)
    pool, evaluation = calibration.split_calibration(corpus, 3, seed=1)
    assert len(pool) == 3 and len(evaluation) == 2
    assert not {u.id for u in pool.utterances} & {u.id for u in evaluation.utterances}
    assert calibration.seeded_order(corpus, 1) == calibration.seeded_order(corpus, 1)
    assert sorted(calibration.seeded_order(corpus, 1)) == [u.id for u in corpus.utterances]


def test_sentence_case():
    assert calibration.sentence_case("I THINK I'M  SURE SAID IVAN") == "I think I'm sure said ivan"
    assert calibration.sentence_case("and i said no") == "And I said no"
    assert calibration.sentence_case("Already Written, yes.") == "Already Written, yes."


def test_stability_and_rank_agreement_tables(tiny_whisper):
    frames = []
    for seed in (0, 1):
        examples = _examples(4, seed=0)
        order = np.random.default_rng(seed).permutation(4)
        measurement = gradients.measure_gradients(tiny_whisper, [examples[i] for i in order], sizes=[2], progress=False)
        for size in (2, 4):
            table = sens.component_scores(tiny_whisper, gradients.tensor_scores(measurement, size))
            frames.append(table.assign(labels="reference", seed=seed, size=size))
    scores = pd.concat(frames, ignore_index=True)
    stability = reliability.stability_table(scores)
    # Seeds 0 and 1 at size 2, per method; the whole pool (size 4) is the reference, not a row.
    assert len(stability) == len(gradients.METHODS) * 2 and set(stability["size"]) == {2}
    assert stability["spearman"].between(-1, 1).all() and (stability["reference_size"] == 4).all()
    summary = reliability.stable_from(stability, threshold=0.9)
    assert len(summary) == len(gradients.METHODS) and "min rho @ 2" in summary.columns
    last = sens.prunable_rows(scores[(scores["seed"] == 0) & (scores["size"] == 4)]).set_index("component")
    matrix = reliability.rank_agreement({m: last[m] for m in gradients.METHODS})
    assert matrix.shape == (4, 4) and np.allclose(np.diag(matrix), 1.0)
    assert np.allclose(matrix, matrix.T) and ((matrix >= -1) & (matrix <= 1)).all().all()


@pytest.mark.slow
def test_teacher_forcing_reproduces_the_models_own_transcripts(tiny_en, shared_data, tmp_path, monkeypatch):
    """With pseudo labels, the argmax at every scored position is the label: prompt and shift are right."""
    from prunelib.corpora import load_corpus

    loaded = tiny_en
    monkeypatch.setenv("PRUNELIB_RESULTS", str(tmp_path))  # pseudo labels are decoded into a throwaway cache
    corpus = load_corpus("librivox-mini:test", data_root=shared_data, limit=2)
    assert loaded.processor.tokenizer.decode(calibration.prefix_ids(loaded)) == "<|startoftranscript|><|notimestamps|>"
    examples, skipped = calibration.calibration_examples(
        loaded, corpus, calibration.label_texts(loaded, corpus, "pseudo")
    )
    assert len(examples) == 2 and not skipped
    for example in examples:
        with torch.no_grad():
            logits = loaded.model(input_features=example.input_features[None],
                                  decoder_input_ids=example.decoder_input_ids[None]).logits[0]
        scored = example.labels != -100
        assert torch.equal(logits.argmax(-1)[scored], example.labels[scored])


@pytest.mark.slow
def test_cached_calibrate_reads_a_finished_run(tiny_en, shared_data, tmp_path, monkeypatch):
    from prunelib.corpora import load_corpus

    loaded = tiny_en
    corpus = load_corpus("librivox-mini:test", data_root=shared_data, limit=2)
    first = sens.cached_calibrate(loaded, corpus, "reference", seed=0, sizes=[1], cache_dir=tmp_path, progress=False)
    assert sorted(first["size"].unique()) == [1, 2] and len(list(tmp_path.glob("*.csv"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached run")

    monkeypatch.setattr(sens, "calibrate", fail)
    again = sens.cached_calibrate(loaded, corpus, "reference", seed=0, sizes=[1], cache_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(again, first, check_dtype=False, rtol=1e-12)
    # An edited transcript under the same id is another run: calibrated again, not read back.
    first_edited = dataclasses.replace(corpus.utterances[0], reference="Other words.")
    edited = dataclasses.replace(corpus, utterances=[first_edited, *corpus.utterances[1:]])
    with pytest.raises(AssertionError, match="recomputed"):
        sens.cached_calibrate(loaded, edited, "reference", seed=0, sizes=[1], cache_dir=tmp_path, progress=False)
