"""Corpus layouts, audio decoding and bad-input errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from prunelib.audio import AudioError, read_audio
from prunelib.corpora import CorpusError, find_local, load_corpus, parse_corpus_name


def _write_tone(path: Path, seconds: float, sample_rate: int, channels: int = 1) -> None:
    """A sine tone: real, decodable audio of a known length and rate."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = 0.1 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    soundfile.write(path, np.stack([tone] * channels, axis=1) if channels > 1 else tone, sample_rate)


def test_librispeech_layout_from_shared_data(shared_data):
    corpus = load_corpus("librispeech:test-other", data_root=shared_data)
    assert len(corpus) == 165
    assert len({u.speaker for u in corpus.utterances}) == 12
    first = corpus.utterances[0]
    assert first.speaker == first.id.split("-")[0]
    assert first.reference.isupper()
    audio = first.load_audio()
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size > 16_000


def test_limit_keeps_sorted_prefix(shared_data):
    full = load_corpus("librispeech:test-other", data_root=shared_data)
    few = load_corpus("librispeech:test-other", data_root=shared_data, limit=3)
    assert [u.id for u in few.utterances] == [u.id for u in full.utterances[:3]]


def test_fsdd_is_resampled_from_8k(shared_data):
    corpus = load_corpus("fsdd:test", data_root=shared_data, limit=2)
    path = corpus.utterances[0].path
    native, rate = soundfile.read(path)
    assert rate == 8_000
    audio = corpus.utterances[0].load_audio()
    assert abs(audio.size - 2 * native.shape[0]) <= 2  # twice the samples at twice the rate
    assert corpus.utterances[0].speaker == path.stem.split("_")[1]


def test_audiofolder_and_corrupt_file(tmp_path):
    folder = tmp_path / "librivox-mini" / "test"
    folder.mkdir(parents=True)
    _write_tone(folder / "good.wav", 1.0, 22_050, channels=2)
    (folder / "broken.flac").write_bytes(b"this is not audio")
    (folder / "metadata.csv").write_text("file_name,transcription\ngood.wav,HELLO\nbroken.flac,WORLD\nempty.wav,\n")
    corpus = load_corpus("librivox-mini:test", data_root=tmp_path)
    assert [u.id for u in corpus.utterances] == ["broken", "good"]
    assert corpus.n_empty_reference == 1
    good = corpus.utterances[1].load_audio()
    assert abs(good.size - 16_000) <= 1  # stereo 22.05 kHz -> mono 16 kHz
    with pytest.raises(AudioError, match="broken.flac"):
        corpus.utterances[0].load_audio()


def test_read_audio_errors(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        read_audio(tmp_path / "missing.wav")
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(AudioError, match="empty"):
        read_audio(tmp_path / "empty.wav")


def test_tedlium_stm_segments(tmp_path):
    split = tmp_path / "tedlium" / "test"
    (split / "stm").mkdir(parents=True)
    (split / "sph").mkdir()
    _write_tone(split / "sph" / "Talk1.wav", 4.0, 16_000)
    shutil.move(split / "sph" / "Talk1.wav", split / "sph" / "Talk1.sph")  # soundfile sniffs the format
    (split / "stm" / "Talk1.stm").write_text(
        "Talk1 1 Speaker1 0.50 1.50 <o,f0,male> hello there\n"
        "Talk1 1 Speaker1 1.50 2.00 <o,f0,male> ignore_time_segment_in_scoring\n"
        "Talk1 1 Speaker1 2.00 3.25 <o,f0,male> general <unk> kenobi\n"
    )
    corpus = load_corpus("tedlium:test", data_root=tmp_path)
    assert [u.reference for u in corpus.utterances] == ["hello there", "general  kenobi"]
    assert corpus.utterances[0].speaker == "Speaker1"
    assert abs(corpus.utterances[1].load_audio().size - 1.25 * 16_000) <= 1


def test_commonvoice_tsv(tmp_path):
    split = tmp_path / "commonvoice" / "en"
    (split / "clips").mkdir(parents=True)
    _write_tone(split / "clips" / "a.wav", 0.5, 48_000)
    (split / "test.tsv").write_text("client_id\tpath\tsentence\nspk1\ta.wav\tA short sentence.\n")
    corpus = load_corpus("commonvoice:test", data_root=tmp_path)
    assert corpus.utterances[0].speaker == "spk1"
    assert abs(corpus.utterances[0].load_audio().size - 8_000) <= 1


@pytest.mark.parametrize("name, message", [
    ("librispeech", "NAME:SPLIT"),
    ("nosuch:test", "unknown corpus"),
    ("librispeech:test-weird", "unknown split"),
])
def test_bad_corpus_names(name, message):
    with pytest.raises(CorpusError, match=message):
        parse_corpus_name(name)


def test_missing_data_root_is_named(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus("librispeech:test-other", data_root=tmp_path / "nowhere")


def test_offline_without_local_copy_names_both_places(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from prunelib import hub

    hub.hub_reachable.cache_clear()
    with pytest.raises(CorpusError) as err:
        load_corpus("librispeech:test-other", data_root=tmp_path)
    text = str(err.value)
    assert str(tmp_path) in text and "openslr/librispeech_asr" in text
    hub.hub_reachable.cache_clear()


def test_local_only_corpus_without_copy(tmp_path):
    with pytest.raises(CorpusError, match="no hub copy"):
        load_corpus("fsdd:test", data_root=tmp_path)
    assert find_local("fsdd:test", None) is None
