"""Transcription, the resumable evaluation cache, and the command line, on real speech."""
from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from prunelib.corpora import Corpus, Utterance, load_corpus
from prunelib.evaluate import evaluate
from prunelib.results import append_jsonl, read_jsonl
from prunelib.scoring import normalize_text
from prunelib.transcribe import Decoding, transcribe

pytestmark = pytest.mark.slow
# `prunelib.evaluate` the attribute is the function; the module is fetched by name.
evaluate_module = importlib.import_module("prunelib.evaluate")


@pytest.fixture
def librivox(shared_data):
    return load_corpus("librivox-mini:test", data_root=shared_data)


def test_transcribes_real_speech(tiny_en, librivox):
    records = transcribe(tiny_en, librivox.utterances[:2], Decoding(batch_size=2), progress=False)
    assert [r["id"] for r in records] == [u.id for u in librivox.utterances[:2]]
    for record in records:
        ref = set(normalize_text(record["reference"]).split())
        hyp = set(normalize_text(record["hypothesis"]).split())
        assert len(ref & hyp) >= 0.7 * len(ref), record
        assert record["seconds"] > 1 and record["decode_seconds"] > 0
        assert record["language"] == "en" and not record["hit_token_budget"]
    # Our path (encoder run explicitly, then generate from its outputs) equals plain generate.
    import torch

    from prunelib.transcribe import generate_kwargs

    features = tiny_en.processor.feature_extractor([u.load_audio() for u in librivox.utterances[:2]],
                                                   sampling_rate=16_000, return_tensors="pt").input_features
    with torch.inference_mode():
        plain = tiny_en.model.generate(features, **generate_kwargs(tiny_en, Decoding()))
    texts = tiny_en.processor.tokenizer.batch_decode(plain, skip_special_tokens=True)
    assert [t.strip() for t in texts] == [r["hypothesis"] for r in records]


def test_beam_search_decodes_as_generate_does_with_and_without_encoder_reuse(tiny_en, librivox):
    from prunelib.evaluate import encoder_reuse
    from prunelib.transcribe import generate_kwargs

    utterances, beams = librivox.utterances[:2], Decoding(batch_size=2, num_beams=2)
    tiny_en.encoder_cache.clear()
    tiny_en.cross_cache.clear()
    reused = transcribe(tiny_en, utterances, beams, progress=False,
                        encoder_reuse=encoder_reuse(tiny_en, "dense", "magnitude"))
    alone = transcribe(tiny_en, utterances, beams, progress=False)
    features = tiny_en.processor.feature_extractor([u.load_audio() for u in utterances], sampling_rate=16_000,
                                                   return_tensors="pt").input_features
    with torch.inference_mode():
        plain = tiny_en.model.generate(features, **generate_kwargs(tiny_en, beams))
    texts = [t.strip() for t in tiny_en.processor.tokenizer.batch_decode(plain, skip_special_tokens=True)]
    assert [r["hypothesis"] for r in reused] == [r["hypothesis"] for r in alone] == texts
    assert not any(r["hit_token_budget"] for r in reused)


def test_long_form_keeps_the_tail_that_truncation_drops(tiny_en, librivox):
    clips = [u.load_audio() for u in librivox.utterances]
    pause = np.zeros(8_000, dtype=np.float32)
    # Five sentences twice over: about 50 s, so the last sentence lies past the 30 s window.
    audio = np.concatenate([part for clip in clips + clips for part in (clip, pause)])
    assert audio.size / 16_000 > 35
    last = librivox.utterances[-1].reference
    long_utt = Utterance(id="long", reference=last, audio_array=audio)
    full = transcribe(tiny_en, [long_utt], Decoding(long_form=True), progress=False)[0]
    cut = transcribe(tiny_en, [long_utt], Decoding(long_form=False), progress=False)[0]
    tail = normalize_text(last).split()[-4:]
    assert full["long_form"] and not full["truncated"]
    assert cut["truncated"] and not cut["long_form"]
    assert " ".join(tail) in normalize_text(full["hypothesis"])
    assert len(normalize_text(full["hypothesis"]).split()) > 1.4 * len(normalize_text(cut["hypothesis"]).split())


def test_cache_is_reused_and_resumes(tiny_en, librivox, tmp_path, monkeypatch):
    corpus = Corpus(name=librivox.name, utterances=librivox.utterances[:3], source=librivox.source)
    calls = []
    real_transcribe = evaluate_module.transcribe

    def counting(loaded, utterances, *args, **kwargs):
        calls.append([u.id for u in utterances])
        return real_transcribe(loaded, utterances, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "transcribe", counting)
    decoding = Decoding(batch_size=3)
    key = evaluate_module.evaluation_key(tiny_en, corpus, decoding, "dense", "magnitude")
    # A previous run that stopped after the first utterance, mid-way through writing the second.
    partial = tmp_path / f"{key}.partial.jsonl"
    first = corpus.utterances[0]
    append_jsonl(partial, {"id": first.id, "reference": first.reference, "hypothesis": "sentinel words",
                           "speaker": None, "seconds": 1.0, "decode_seconds": 1.0,
                           "audio_fingerprint": first.audio_fingerprint()})
    with partial.open("a") as handle:
        handle.write('{"id": "cut-off')

    resumed = evaluate(tiny_en, corpus, decoding, cache_dir=tmp_path, progress=False, n_boot=50)
    assert calls == [[u.id for u in corpus.utterances[1:]]]
    assert resumed.records[0]["hypothesis"] == "sentinel words"
    assert not partial.exists() and resumed.path.exists()

    again = evaluate(tiny_en, corpus, decoding, cache_dir=tmp_path, progress=False, n_boot=50)
    assert len(calls) == 1 and again.from_cache
    assert again.summary["wer"] == resumed.summary["wer"]
    assert read_jsonl(again.path) == resumed.records


def _counting_transcribe(monkeypatch) -> list[list[str]]:
    """Record which utterance ids each call of evaluate's transcribe decodes."""
    calls: list[list[str]] = []
    real_transcribe = evaluate_module.transcribe

    def counting(loaded, utterances, *args, **kwargs):
        calls.append([u.id for u in utterances])
        return real_transcribe(loaded, utterances, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "transcribe", counting)
    return calls


def test_the_summary_counts_dropped_and_unscorable_empty_references_apart(tiny_en, tmp_path, monkeypatch):
    def echo(loaded, utterances, *args, on_batch=None, **kwargs):  # a perfect decoder, without decoding
        records = [{"id": u.id, "reference": u.reference, "hypothesis": u.reference, "speaker": None,
                    "seconds": 1.0, "decode_seconds": 0.1} for u in utterances]
        if on_batch is not None:
            on_batch(records)
        return records

    monkeypatch.setattr(evaluate_module, "transcribe", echo)
    silence = np.zeros(16_000, dtype=np.float32)
    corpus = Corpus("toy:test", [Utterance(id="a", reference="hello world", audio_array=silence),
                                 Utterance(id="b", reference="[inaudible]", audio_array=silence + 0.1)],
                    source="memory", n_empty_reference=2)
    summary = evaluate(tiny_en, corpus, cache_dir=tmp_path, progress=False, n_boot=10).summary
    assert (summary["n"], summary["n_empty_reference"], summary["n_dropped_empty_reference"]) == (1, 1, 2)


@pytest.fixture
def librivox_copy(shared_data, tmp_path):
    """A writable copy of librivox-mini under tmp_path/data."""
    copy = tmp_path / "data" / "librivox-mini" / "test"
    shutil.copytree(shared_data / "librivox-mini" / "test", copy)
    return copy


def test_an_edited_reference_or_audio_file_is_decoded_again(tiny_en, librivox_copy, tmp_path, monkeypatch):
    calls = _counting_transcribe(monkeypatch)
    data, cache = librivox_copy.parents[1], tmp_path / "cache"
    first = evaluate(tiny_en, load_corpus("librivox-mini:test", data_root=data), cache_dir=cache, progress=False,
                     n_boot=20)
    assert first.summary["wer"] > 0 and first.summary["n_decoded"] == 5
    # Make one reference say exactly what the model heard: a rerun must not report it from the cache.
    metadata = librivox_copy / "metadata.csv"
    victim = next(r for r in first.records if normalize_text(r["hypothesis"]) != normalize_text(r["reference"]))
    metadata.write_text(metadata.read_text().replace(victim["reference"], victim["hypothesis"]))
    edited = evaluate(tiny_en, load_corpus("librivox-mini:test", data_root=data), cache_dir=cache, progress=False,
                      n_boot=20)
    assert calls[-1] == [victim["id"]] and edited.summary["n_decoded"] == 1
    assert next(r for r in edited.records if r["id"] == victim["id"])["reference"] == victim["hypothesis"]
    assert edited.summary["substitutions"] + edited.summary["deletions"] + edited.summary["insertions"] \
        < first.summary["substitutions"] + first.summary["deletions"] + first.summary["insertions"]
    # Break an audio file, then mend it: skipped while broken, decoded again once fixed.
    audio = sorted(librivox_copy.glob("*.flac"))[1]
    good = audio.read_bytes()
    audio.write_bytes(b"not audio at all")
    broken = evaluate(tiny_en, load_corpus("librivox-mini:test", data_root=data), cache_dir=cache, progress=False,
                      n_boot=20)
    assert broken.summary["n_failed"] == 1 and calls[-1] == [audio.stem]
    # A failed read is tried again on the next run, not served from the cache as a skip.
    still = evaluate(tiny_en, load_corpus("librivox-mini:test", data_root=data), cache_dir=cache, progress=False,
                     n_boot=20)
    assert still.summary["n_failed"] == 1 and calls[-1] == [audio.stem] and len(calls) == 4
    audio.write_bytes(good)
    mended = evaluate(tiny_en, load_corpus("librivox-mini:test", data_root=data), cache_dir=cache, progress=False,
                      n_boot=20)
    assert mended.summary["n_failed"] == 0 and calls[-1] == [audio.stem]
    assert mended.summary["wer"] == edited.summary["wer"]
    again = evaluate(tiny_en, load_corpus("librivox-mini:test", data_root=data), cache_dir=cache, progress=False,
                     n_boot=20)
    assert again.from_cache and len(calls) == 5


def test_a_cut_cache_file_is_completed_not_scored_as_it_is(tiny_en, librivox, tmp_path, monkeypatch):
    calls = _counting_transcribe(monkeypatch)
    full = evaluate(tiny_en, librivox, cache_dir=tmp_path, progress=False, n_boot=20)
    lines = full.path.read_text().splitlines(keepends=True)
    full.path.write_text("".join(lines[:2]))  # cut at a line boundary: two of five records left
    resumed = evaluate(tiny_en, librivox, cache_dir=tmp_path, progress=False, n_boot=20)
    assert calls[-1] == [u.id for u in librivox.utterances[2:]]
    assert resumed.summary["n"] == 5 and resumed.summary["wer"] == full.summary["wer"]
    # Records of utterances outside the corpus are ignored, counted, and dropped from the file.
    append_jsonl(resumed.path, {**resumed.records[0], "id": "stranger", "hypothesis": "x"})
    again = evaluate(tiny_en, librivox, cache_dir=tmp_path, progress=False, n_boot=20)
    assert again.from_cache and again.summary["n_cache_ignored"] == 1 and again.summary["n"] == 5
    assert again.summary["wer"] == full.summary["wer"] and len(calls) == 2
    # A cut mid-line (a crash, a full disk) loses that record only; the stranger goes on the rewrite.
    lines = resumed.path.read_text().splitlines(keepends=True)
    resumed.path.write_text("".join(lines[:-1])[:-20])
    mended = evaluate(tiny_en, librivox, cache_dir=tmp_path, progress=False, n_boot=20)
    assert calls[-1] == [librivox.utterances[-1].id] and mended.summary["wer"] == full.summary["wer"]
    assert [r["id"] for r in read_jsonl(mended.path)] == [u.id for u in librivox.utterances]
    # An English-only model shares one cache file across pipelines; a language it cannot decode is still refused.
    with pytest.raises(ValueError, match="English-only"):
        evaluate(tiny_en, librivox, Decoding(language="de"), cache_dir=tmp_path, progress=False, n_boot=20)


def test_every_setting_that_changes_a_transcript_is_in_the_key(tiny_en, librivox, monkeypatch):
    import copy

    key = evaluate_module.evaluation_key
    base = key(tiny_en, librivox, Decoding(), "dense", "magnitude")
    assert key(tiny_en, librivox, Decoding(batch_size=3), "dense", "magnitude") == base
    assert key(tiny_en, librivox, Decoding(num_beams=2), "dense", "magnitude") != base
    assert key(tiny_en, librivox, Decoding(max_tokens_per_second=20.0), "dense", "magnitude") != base
    assert key(tiny_en, librivox, Decoding(long_form=False), "dense", "magnitude") != base
    saved = copy.deepcopy(tiny_en.model.generation_config)
    try:
        tiny_en.model.generation_config.suppress_tokens = [1, 2, 3]
        assert key(tiny_en, librivox, Decoding(), "dense", "magnitude") != base
    finally:
        tiny_en.model.generation_config = saved
    assert key(tiny_en, librivox, Decoding(), "dense", "magnitude") == base
    # The vocabulary's hash is kept per tokenizer; one given a new token is hashed again.
    extended = dataclasses.replace(tiny_en, processor=copy.deepcopy(tiny_en.processor))
    assert key(extended, librivox, Decoding(), "dense", "magnitude") == base
    extended.processor.tokenizer.add_tokens(["prunelibtesttoken"])
    assert key(extended, librivox, Decoding(), "dense", "magnitude") != base
    # prunelib's own decoding code is named by its version.
    monkeypatch.setattr(evaluate_module, "CACHE_VERSION", evaluate_module.CACHE_VERSION + 1)
    assert key(tiny_en, librivox, Decoding(), "dense", "magnitude") != base


def test_collapsed_prune_transcripts_do_not_depend_on_the_batch(tiny_en, shared_data):
    from prunelib.pruning import pruned

    # global=0.6 collapses tiny.en into repetition loops that run into the token budget; the
    # budget used to be the longest utterance's in a batch (WER 782 at batch 8, 412 at batch 1).
    corpus = load_corpus("librispeech:test-other", data_root=shared_data, limit=6)
    with pruned(tiny_en.model, "global=0.6"):
        runs = {size: transcribe(tiny_en, corpus.utterances, Decoding(batch_size=size), progress=False)
                for size in (1, 6)}
    assert sum(r["hit_token_budget"] for r in runs[1]) >= 3
    for size in (6,):
        assert [r["hypothesis"] for r in runs[size]] == [r["hypothesis"] for r in runs[1]], size
        assert [r["hit_token_budget"] for r in runs[size]] == [r["hit_token_budget"] for r in runs[1]]


def test_corrupt_audio_is_skipped_and_counted(tiny_en, shared_data, tmp_path):
    copy = tmp_path / "librivox-mini" / "test"
    shutil.copytree(shared_data / "librivox-mini" / "test", copy)
    victim = sorted(copy.glob("*.flac"))[0]
    victim.write_bytes(b"not audio at all")
    corpus = load_corpus("librivox-mini:test", data_root=tmp_path)
    result = evaluate(tiny_en, corpus, Decoding(), cache_dir=tmp_path / "cache", progress=False, n_boot=50)
    assert result.summary["n_failed"] == 1
    assert result.summary["n"] == len(corpus) - 1
    failed = [r for r in result.records if r.get("error")]
    assert failed[0]["id"] == victim.stem and victim.name in failed[0]["error"]


def _cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m prunelib` and capture its output."""
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "prunelib", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_cli_eval_prints_json_last(shared_data, tmp_path, tiny_en):
    done = _cli("eval", "--model", "openai/whisper-tiny.en", "--dataset", "fsdd:test", "--data-root", str(shared_data),
                "--limit", "4", "--prune", "decoder.self_attn=0.5", "--cache-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("model", "dataset", "n", "wer", "wer_ci95", "cer", "substitutions", "insertions", "deletions",
                "sparsity", "seconds", "rtfx"):
        assert key in result
    assert result["n"] == 4 and result["prune"] == "decoder.self_attn=0.5"
    assert 0 < result["sparsity"] < 50 and 0 < result["sparsity_linear"] < 50
    assert "transcribe" in done.stderr  # the progress bar


@pytest.mark.parametrize("args, message", [
    (["--model", "openai/whisper-tiny.en", "--dataset", "nosuch:test"], "unknown corpus"),
    (["--model", "openai/whisper-tiny.en", "--dataset", "fsdd:test", "--limit", "-1"], "--limit: must be at least 1"),
    (["--model", "openai/whisper-tiny.en", "--dataset", "fsdd:test", "--language", "fr"], "English-only"),
    (["--model", "openai/whisper-tiny.en", "--dataset", "fsdd:test", "--device", "nosuch"], "unknown device"),
    (["--model", "openai/whisper-tiny.en", "--dataset", "fsdd:test", "--prune", "encoder.layers[2:10]=0.5"],
     "reaches past the 4 encoder layers"),
    (["--model", "/no/such/model", "--dataset", "fsdd:test"], "cannot load model"),
    (["--model", "openai/whisper-tiny.en", "--dataset", "fsdd:test", "--prune", "decoder.self_attn=1.5"], "sparsity"),
    (["--model", "openai/whisper-tiny.en", "--dataset", "fsdd:test", "--max-tokens-per-second", "-1"],
     "max_tokens_per_second must be positive"),
])
def test_cli_bad_input_exits_nonzero(shared_data, args, message, capsys, monkeypatch):
    # In-process: each subprocess would spend about 10 s importing torch and transformers.
    from prunelib.__main__ import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        status = main(["eval", *args, "--data-root", str(shared_data)])
    except SystemExit as refused:  # argparse refuses before main returns
        status = refused.code
    assert status == 2
    assert message in capsys.readouterr().err


def test_cli_bad_input_exits_nonzero_from_the_command_line(shared_data):
    done = _cli("eval", "--model", "openai/whisper-tiny.en", "--dataset", "nosuch:test",
                "--data-root", str(shared_data), env_extra={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    assert "unknown corpus" in done.stderr


def test_encoder_reuse_gives_identical_transcripts(tiny_en, librivox):
    from prunelib.encoder_cache import EncoderCache, EncoderReuse
    from prunelib.pruning import pruned

    cache = EncoderCache()
    reuse = EncoderReuse(cache=cache, key=tiny_en.fingerprint)
    decoding = Decoding(batch_size=2)
    utterances = librivox.utterances[:4]
    dense = transcribe(tiny_en, utterances, decoding, progress=False, encoder_reuse=reuse)
    assert len(cache) == 4 and cache.hits == 0
    with pruned(tiny_en.model, "decoder.self_attn=0.5"):
        reused = transcribe(tiny_en, utterances, decoding, progress=False, encoder_reuse=reuse)
        full = transcribe(tiny_en, utterances, decoding, progress=False)
    assert cache.hits == 4
    assert [r["hypothesis"] for r in reused] == [r["hypothesis"] for r in full]
    assert [r["hypothesis"] for r in dense] == [
        r["hypothesis"] for r in transcribe(tiny_en, utterances, decoding, progress=False)
    ]


def test_other_audio_under_the_same_id_gets_its_own_encoder_states(tiny_en, librivox, tmp_path):
    # Two corpora with one id (sample_0001 in two audiofolders, say), decoded by one loaded model.
    first, second = librivox.utterances[:2]
    corpora = [Corpus(name, [Utterance(id="shared", reference=utt.reference, audio_array=utt.load_audio())],
                      source="memory") for name, utt in (("a:test", first), ("b:test", second))]
    tiny_en.encoder_cache.clear()
    tiny_en.cross_cache.clear()
    shared = [evaluate(tiny_en, corpus, Decoding(batch_size=1), cache_dir=tmp_path, progress=False, n_boot=10)
              for corpus in corpora]
    alone = evaluate(tiny_en, corpora[1], Decoding(batch_size=1), cache_dir=tmp_path / "alone", progress=False,
                     n_boot=10, reuse_encoder=False)
    assert shared[0].records[0]["hypothesis"] != shared[1].records[0]["hypothesis"]
    assert shared[1].records[0]["hypothesis"] == alone.records[0]["hypothesis"]


def test_pruned_encoder_outputs_are_shared_only_by_the_same_prune(tiny_en, librivox, tmp_path):
    corpus = librivox.subset([u.id for u in librivox.utterances[:3]])
    spec = "encoder.layers[-1:]=0.5"
    tiny_en.encoder_cache.clear()
    first = evaluate(tiny_en, corpus, Decoding(batch_size=2), prune=spec, cache_dir=tmp_path, progress=False)
    hits = tiny_en.encoder_cache.hits
    # Another decoding setting (so no cached transcripts), same encoder weights: the encoder is skipped.
    other = Decoding(batch_size=2, max_tokens_per_second=20.0)
    again = evaluate(tiny_en, corpus, other, prune=spec, cache_dir=tmp_path, progress=False)
    assert not again.from_cache and tiny_en.encoder_cache.hits == hits + 3
    full = evaluate(tiny_en, corpus, other, prune=spec, cache_dir=tmp_path / "fresh", progress=False,
                    reuse_encoder=False)
    assert [r["hypothesis"] for r in again.records] == [r["hypothesis"] for r in full.records]
    assert [r["hypothesis"] for r in first.records] == [r["hypothesis"] for r in full.records]
    # A different prune of the same layer never reads those outputs, only the dense states entering it.
    hits = tiny_en.encoder_cache.hits
    other_prune = evaluate(tiny_en, corpus, Decoding(batch_size=2), prune="encoder.layers[-1:]=0.6",
                           cache_dir=tmp_path, progress=False)
    assert tiny_en.encoder_cache.hits == hits + 3
    unshared = evaluate(tiny_en, corpus, Decoding(batch_size=2), prune="encoder.layers[-1:]=0.6",
                        cache_dir=tmp_path / "unshared", progress=False, reuse_encoder=False)
    assert [r["hypothesis"] for r in other_prune.records] == [r["hypothesis"] for r in unshared.records]


@pytest.mark.parametrize("first_pruned", [1, 2, 3])
def test_encoder_prefix_reuse_is_exact(tiny_en, librivox, tmp_path, first_pruned):
    from prunelib.evaluate import dense_encoder_prefix, encoder_reuse
    from prunelib.pruning import pruned
    from prunelib.transcribe import encoder_outputs

    spec = f"encoder.layers[{first_pruned}:]=0.5"
    assert dense_encoder_prefix(tiny_en, spec) == first_pruned
    utterances = librivox.utterances[:3]
    arrays = [u.load_audio() for u in utterances]
    features = tiny_en.processor.feature_extractor(arrays, sampling_rate=16000, return_tensors="pt").input_features
    ids = [u.id for u in utterances]
    tiny_en.encoder_cache.clear()
    with torch.inference_mode():
        with pruned(tiny_en.model, f"encoder.layers[{first_pruned}:]=0.3"):
            # The first prune stores the dense states entering layer `first_pruned`.
            encoder_outputs(tiny_en, ids, features, encoder_reuse(tiny_en, f"encoder.layers[{first_pruned}:]=0.3",
                                                                  "magnitude"))
        with pruned(tiny_en.model, spec):
            hits = tiny_en.encoder_cache.hits
            reused = encoder_outputs(tiny_en, ids, features, encoder_reuse(tiny_en, spec, "magnitude"))
            assert tiny_en.encoder_cache.hits == hits + len(ids)  # the prefix, not the outputs
            computed = tiny_en.model.get_encoder()(features).last_hidden_state
    assert torch.equal(reused, computed)
    corpus = librivox.subset(ids)
    with_prefix = evaluate(tiny_en, corpus, Decoding(batch_size=3), prune=spec, cache_dir=tmp_path / "a",
                           progress=False)
    without = evaluate(tiny_en, corpus, Decoding(batch_size=3), prune=spec, cache_dir=tmp_path / "b",
                       progress=False, reuse_encoder=False)
    assert [r["hypothesis"] for r in with_prefix.records] == [r["hypothesis"] for r in without.records]


def test_dense_encoder_prefix_counts_leading_dense_layers(tiny_en):
    from prunelib.evaluate import dense_encoder_prefix

    assert dense_encoder_prefix(tiny_en, "decoder.ffn=0.5") == 4
    assert dense_encoder_prefix(tiny_en, "encoder.layers[2].ffn=0.5,decoder.ffn=0.5") == 2
    assert dense_encoder_prefix(tiny_en, "encoder.layers[3].self_attn=0.5,encoder.layers[1].ffn=0.2") == 1
    assert dense_encoder_prefix(tiny_en, "encoder.ffn=0.5") == 0


def test_encoder_cache_budget_evicts_oldest():
    import torch

    from prunelib.encoder_cache import EncoderCache

    cache = EncoderCache(max_bytes=3 * 4 * 10)  # room for three 10-float tensors
    for index in range(4):
        cache.put("w", f"u{index}", torch.full((10,), float(index)))
    assert len(cache) == 3 and cache.get("w", "u0") is None
    assert cache.get("w", "u3")[0].item() == 3.0


def test_token_budget_stops_runaway_decoding(tiny_en, librivox):
    assert Decoding().token_budget(5.0) == 60
    assert Decoding(max_tokens_per_second=None).token_budget(5.0) is None
    with pytest.raises(ValueError, match="max_tokens_per_second"):
        Decoding(max_tokens_per_second=0)
    # The two longest sentences: both need more than the 10-token floor of the budget.
    utterances = sorted(librivox.utterances, key=lambda u: len(u.reference))[-2:]
    normal = transcribe(tiny_en, utterances, Decoding(), progress=False)
    starved = transcribe(tiny_en, utterances, Decoding(batch_size=1, max_tokens_per_second=0.5), progress=False)
    assert not any(r["hit_token_budget"] for r in normal)
    assert all(r["hit_token_budget"] for r in starved)
    for full, cut in zip(normal, starved, strict=True):
        assert len(cut["hypothesis"].split()) < len(full["hypothesis"].split())


def test_cuda_without_cuda_is_a_clear_error(monkeypatch):
    import torch

    from prunelib.models import check_device, load_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA; use --device cpu"):
        check_device("cuda")
    with pytest.raises(ValueError, match="no CUDA"):
        load_model("openai/whisper-tiny.en", device="cuda:0")
    assert check_device("cpu").type == "cpu"


def test_a_config_with_more_layers_than_the_weights_is_refused(tiny_en, tmp_path):
    from prunelib.models import ModelNotFoundError, load_model

    folder = tmp_path / "model"
    tiny_en.model.save_pretrained(folder)
    tiny_en.processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["encoder_layers"] += 2  # two layers the weights do not have: randomly initialised before
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError, match=r"do not match its config.json .*model.encoder.layers.4"):
        load_model(str(folder))


def test_an_english_only_model_refuses_another_language(tiny_en, librivox):
    with pytest.raises(ValueError, match="English-only"):
        transcribe(tiny_en, librivox.utterances[:1], Decoding(language="fr"), progress=False)


def test_a_damaged_sparsity_file_is_named_and_measured_again(tiny_en, librivox, tmp_path, caplog):
    corpus = librivox.subset([librivox.utterances[0].id])
    first = evaluate(tiny_en, corpus, prune="decoder.ffn=0.3", cache_dir=tmp_path, progress=False, n_boot=10)
    sparsity_file = first.path.with_name(first.path.name.replace(".jsonl", ".sparsity.json"))
    sparsity_file.write_text('{"sparsity": 1')
    with caplog.at_level("WARNING"):
        again = evaluate(tiny_en, corpus, prune="decoder.ffn=0.3", cache_dir=tmp_path, progress=False, n_boot=10)
    assert str(sparsity_file) in caplog.text and "damaged" in caplog.text
    assert again.from_cache and again.summary["sparsity"] == first.summary["sparsity"] > 0
    assert json.loads(sparsity_file.read_text())["sparsity"] == first.summary["sparsity"]


@pytest.mark.parametrize("argv", [
    ["sensitivity", "--model", "m", "--dataset", "fsdd:test", "--n", "-1", "--out", "x.csv"],
    ["eval", "--model", "m", "--dataset", "fsdd:test", "--batch-size", "0"],
    ["export", "--model", "m", "--allocator", "wanda", "--target", "0.4", "--out", "x", "--calibration-speakers", "0"],
])
def test_cli_counts_must_be_positive(argv, capsys):
    from prunelib.__main__ import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_decoder_batches_larger_than_encoder_chunks_give_the_same_transcripts(tiny_en, librivox):
    utterances = librivox.utterances[:4]
    wide = transcribe(tiny_en, utterances, Decoding(batch_size=4, encoder_batch_size=2), progress=False)
    narrow = transcribe(tiny_en, utterances, Decoding(batch_size=2), progress=False)
    assert [r["hypothesis"] for r in wide] == [r["hypothesis"] for r in narrow]
    with pytest.raises(ValueError, match="encoder_batch_size"):
        Decoding(encoder_batch_size=0)


def test_cross_attention_keys_and_values_are_reused_exactly(tiny_en, librivox):
    from prunelib.evaluate import encoder_reuse
    from prunelib.pruning import pruned

    utterances = librivox.utterances[:3]
    decoding = Decoding(batch_size=3)
    tiny_en.cross_cache.clear()
    hits = tiny_en.cross_cache.hits
    for spec in ("decoder.self_attn=0.5", "decoder.ffn=0.3"):  # both leave cross-attention's k/v dense: shared
        with pruned(tiny_en.model, spec):
            plain = transcribe(tiny_en, utterances, decoding, progress=False)
            reused = transcribe(tiny_en, utterances, decoding, progress=False,
                                encoder_reuse=encoder_reuse(tiny_en, spec, "magnitude"))
        assert [r["hypothesis"] for r in reused] == [r["hypothesis"] for r in plain]
    assert len(tiny_en.cross_cache) == 3 and tiny_en.cross_cache.hits == hits + 3
    # Pruning the cross-attention's keys and values names other states.
    assert encoder_reuse(tiny_en, "decoder.cross_attn=0.5", "magnitude").cross_key != \
        encoder_reuse(tiny_en, "decoder.ffn=0.5", "magnitude").cross_key


def test_a_cache_without_eviction_keeps_what_it_has():
    import torch as _torch

    from prunelib.encoder_cache import EncoderCache

    cache = EncoderCache(max_bytes=2 * 4 * 10, evict=False)
    for index in range(3):
        cache.put("key", str(index), _torch.zeros(10))
    assert len(cache) == 2 and cache.holds("key", "0") and not cache.holds("key", "2")
