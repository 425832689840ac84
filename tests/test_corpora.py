"""Corpus layouts, audio decoding and bad-input errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from prunelib.audio import AudioError, read_audio
from prunelib.corpora import CorpusError, Utterance, find_local, load_corpus, parse_corpus_name


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


# --- bad input that used to pass silently or fail without naming its file ----------------

def test_a_data_root_that_is_itself_a_corpus_folder_does_not_stand_in_for_another(shared_data, tmp_path):
    other = shared_data / "LibriSpeech" / "test-other"
    with pytest.raises(CorpusError, match=r"looks like a corpus folder itself.*test-clean"):
        load_corpus("librispeech:test-clean", data_root=other)
    with pytest.raises(CorpusError, match=r"earnings22/test/metadata.csv"):
        load_corpus("earnings22:test", data_root=shared_data / "librivox-mini" / "test")
    # A root whose own path is the corpus's folder is that corpus.
    assert len(load_corpus("librispeech:test-other", data_root=other)) == 165
    assert len(load_corpus("librivox-mini:test", data_root=shared_data / "librivox-mini" / "test")) == 5


def test_duplicate_ids_are_refused_before_decoding_naming_both_files(tmp_path):
    folder = tmp_path / "librivox-mini" / "test"
    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True)
        _write_tone(folder / sub / "same.wav", 0.5, 16_000)
    (folder / "metadata.csv").write_text("file_name,transcription\na/same.wav,ONE\nb/same.wav,TWO\n")
    with pytest.raises(CorpusError, match=r"'same' appears twice.*a/same.wav.*b/same.wav"):
        load_corpus("librivox-mini:test", data_root=tmp_path)


def test_unreadable_transcripts_name_their_file(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    (chapter / "1-2.trans.txt").write_bytes("1-2-0000 CAF\xc9\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"1-2.trans.txt is not UTF-8"):
        load_corpus("librispeech:test-clean", data_root=tmp_path)


def test_metadata_with_a_byte_order_mark_and_short_rows(tmp_path):
    folder = tmp_path / "librivox-mini" / "test"
    folder.mkdir(parents=True)
    _write_tone(folder / "a.wav", 0.5, 16_000)
    (folder / "metadata.csv").write_text("\ufefffile_name,transcription\na.wav,HELLO\n", encoding="utf-8")
    assert load_corpus("librivox-mini:test", data_root=tmp_path).utterances[0].reference == "HELLO"
    (folder / "metadata.csv").write_text("file_name,transcription\na.wav,HELLO\nb.wav\n")
    with pytest.raises(CorpusError, match=r"metadata.csv:3: too few fields"):
        load_corpus("librivox-mini:test", data_root=tmp_path)
    stm = tmp_path / "tedlium" / "test" / "stm"
    stm.mkdir(parents=True)
    (stm / "Talk.stm").write_text("Talk 1 Speaker 0.0 1.0 <o> fine\nTalk 1 Speaker\n")
    with pytest.raises(CorpusError, match=r"Talk.stm:2: too few fields"):
        load_corpus("tedlium:test", data_root=tmp_path)


@pytest.mark.parametrize("limit", [-1, 0, 2.5])
def test_a_limit_that_is_not_a_positive_count_is_refused(shared_data, limit):
    with pytest.raises(CorpusError, match="limit must be"):
        load_corpus("librivox-mini:test", data_root=shared_data, limit=limit)


def test_a_wav_shorter_than_its_header_says_is_refused(tmp_path):
    _write_tone(tmp_path / "full.wav", 2.0, 16_000)
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    assert read_audio(tmp_path / "full.wav").size == 32_000
    with pytest.raises(AudioError, match=r"truncated: its header declares 2.00 s, the file holds 1.00 s.*cut.wav"):
        read_audio(tmp_path / "cut.wav")


@pytest.mark.parametrize("array, problem", [
    (np.zeros((16_000, 2), dtype=np.float32), r"float32 of shape \(16000, 2\)"),  # stereo
    (np.zeros(0, dtype=np.float32), r"shape \(0,\)"),
    (np.zeros(16_000, dtype=np.int16), "int16"),  # PCM integers, not samples in [-1, 1]
])
def test_in_memory_audio_must_be_mono_float_samples(array, problem):
    with pytest.raises(AudioError, match=rf"utterance m: audio_array must be .*{problem}"):
        Utterance(id="m", reference="x", audio_array=array).load_audio()
    assert Utterance(id="m", reference="x", audio_array=np.zeros(8, dtype=np.float64)).load_audio().dtype == np.float32


def test_audio_fingerprint_follows_the_content(tmp_path):
    from prunelib.corpora import Utterance

    _write_tone(tmp_path / "a.wav", 0.5, 16_000)
    path = Utterance(id="a", reference="x", path=tmp_path / "a.wav")
    before = path.audio_fingerprint()
    assert before == Utterance(id="b", reference="y", path=tmp_path / "a.wav").audio_fingerprint()
    _write_tone(tmp_path / "a.wav", 0.6, 16_000)
    assert path.audio_fingerprint() != before
    segment = Utterance(id="a", reference="x", path=tmp_path / "a.wav", start=0.0, end=0.2)
    assert segment.audio_fingerprint() != path.audio_fingerprint()
    array = np.zeros(10, dtype=np.float32)
    in_memory = Utterance(id="m", reference="x", audio_array=array).audio_fingerprint()
    assert in_memory != Utterance(id="m", reference="x", audio_array=array + 1).audio_fingerprint()
