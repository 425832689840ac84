"""Exporting one allocation: calibration split, score files, the saved model and the CLI's errors."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from prunelib import export, handoff
from prunelib.__main__ import main
from prunelib.corpora import load_corpus
from prunelib.models import weights_fingerprint
from prunelib.pruning import sparsity_report


@pytest.fixture
def librivox(shared_data):
    return load_corpus("librivox-mini:test", data_root=shared_data)


def test_wanda_export_restores_the_model_and_reloads_at_the_target(tiny_en, librivox, tmp_path):
    before = weights_fingerprint(tiny_en.model)
    calibration = handoff.calibration_pool(librivox, n_speakers=1, seed=0)
    allocation, report = export.export_allocation(tiny_en, "wanda", 0.3, tmp_path / "wanda_30", calibration)
    assert weights_fingerprint(tiny_en.model) == before
    assert allocation.importance_name != "magnitude"  # activation-weighted, not plain magnitude
    reloaded = WhisperForConditionalGeneration.from_pretrained(tmp_path / "wanda_30")
    assert sparsity_report(reloaded).overall_linear == pytest.approx(0.3, abs=1e-3)
    saved = json.loads((tmp_path / "wanda_30" / "sparsity_report.json").read_text())
    assert saved["overall_linear"] == pytest.approx(report.overall_linear)
    # A complete Hugging Face folder: the paper's scoring normalises with the saved tokenizer.
    from transformers import WhisperProcessor

    assert (tmp_path / "wanda_30" / "normalizer.json").exists()
    tokenizer = WhisperProcessor.from_pretrained(tmp_path / "wanda_30").tokenizer
    assert tokenizer.normalize("Mr. Smith's colour") == "mister smith is color"


def test_sparsegpt_export_saves_the_updated_weights_and_reloads_to_the_same_transcripts(tiny_en, librivox, tmp_path):
    from prunelib.evaluate import evaluate
    from prunelib.models import LoadedModel
    from prunelib.transcribe import Decoding

    before = weights_fingerprint(tiny_en.model)
    calibration = handoff.calibration_pool(librivox, n_speakers=1, seed=0)
    calibrating = {u.id for u in calibration.utterances}
    held_out = librivox.subset([u.id for u in librivox.utterances if u.id not in calibrating])
    allocation, _ = export.export_allocation(tiny_en, "sparsegpt", 0.3, tmp_path / "sgpt_30", calibration)
    assert weights_fingerprint(tiny_en.model) == before
    reloaded = WhisperForConditionalGeneration.from_pretrained(tmp_path / "sgpt_30").eval()
    params = dict(reloaded.named_parameters())
    assert all(torch.equal(params[name], value) for name, value in allocation.weights.items())  # updated, not masked
    assert sparsity_report(reloaded).overall_linear == pytest.approx(0.3, abs=1e-5)  # per-matrix rounding only
    decoding = Decoding(language="en", batch_size=4)
    in_place = evaluate(tiny_en, held_out, decoding, prune=allocation.spec, importance=allocation.importance,
                        importance_name=allocation.importance_name, weights=allocation.weights,
                        cache_dir=tmp_path / "a", progress=False, n_boot=10)
    as_saved = LoadedModel(name="export", model=reloaded, processor=tiny_en.processor, source="test",
                           fingerprint=weights_fingerprint(reloaded))
    again = evaluate(as_saved, held_out, decoding, cache_dir=tmp_path / "b", progress=False, n_boot=10)
    assert [r["hypothesis"] for r in in_place.records] == [r["hypothesis"] for r in again.records]
    assert json.loads((tmp_path / "sgpt_30" / "prunelib_export.json").read_text())["allocator"] == "sparsegpt"


def test_cli_exports_a_magnitude_allocation(tiny_en, tmp_path, capsys):
    out = tmp_path / "global_20"
    assert main(["-q", "export", "--model", "openai/whisper-tiny.en", "--allocator", "global", "--target", "0.2",
                 "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["sparsity_linear"] == pytest.approx(20.0, abs=0.1)
    assert result["calibration_utterances"] == 0  # magnitude allocators read no audio
    assert (out / "model.safetensors").exists()


@pytest.mark.parametrize("args, message", [
    (["--allocator", "sensitivity-fisher", "--target", "0.4"], "needs --scores"),
    (["--allocator", "magic", "--target", "0.4"], "unknown allocator 'magic'"),
    (["--allocator", "empirical", "--target", "0.4"], "damage curves that notebook 04 measures"),
    (["--allocator", "global", "--target", "1.5"], "--target must lie in"),
])
def test_cli_export_errors_are_named(tiny_en, tmp_path, capsys, args, message):
    assert main(["export", "--model", "openai/whisper-tiny.en", "--out", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_save_writes_a_folder_that_loads_to_the_same_weights(tiny_en, tmp_path, capsys):
    from prunelib.models import load_model

    out = tmp_path / "tiny-folder"
    assert main(["save", "--model", "openai/whisper-tiny.en", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    reloaded = load_model(str(out))
    assert reloaded.source.startswith("local folder")
    assert reloaded.fingerprint == result["fingerprint"] == tiny_en.fingerprint


def test_cli_save_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    assert main(["save", "--model", "openai/whisper-tiny.en", "--out", str(theirs)]) == 2
    assert "is not an earlier prunelib export" in capsys.readouterr().err
    assert (theirs / "notes.txt").read_text() == "keep me"
