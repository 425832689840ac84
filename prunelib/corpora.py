"""Find a named speech corpus (local copy first, then the hub) and list its utterances."""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import logging
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunelib.audio import SAMPLE_RATE, AudioError, read_audio, to_mono_16k
from prunelib.hub import hub_endpoint, hub_reachable

log = logging.getLogger(__name__)

DATA_ENV = "PRUNELIB_DATA"


@functools.lru_cache(maxsize=1 << 14)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes; memoised by path, size and mtime, so a rerun hashes each file once."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: Path) -> str:
    """The content hash of a file, or 'missing' when it cannot be read."""
    try:
        stat = path.stat()
        return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)
    except OSError:
        return "missing"


class CorpusError(ValueError):
    """A corpus that cannot be found or read."""


@dataclass(frozen=True)
class Utterance:
    """One utterance: its id, reference text, speaker, and where its audio comes from."""

    id: str
    reference: str
    speaker: str | None = None
    path: Path | None = None  # audio file on disk
    start: float | None = None  # seconds into `path`, for segment corpora (TED-LIUM .stm)
    end: float | None = None
    audio_bytes: bytes | None = field(default=None, repr=False)  # encoded audio from the hub
    audio_array: np.ndarray | None = field(default=None, repr=False, compare=False)  # 16 kHz mono samples

    def audio_fingerprint(self) -> str:
        """A short hash of what this utterance's audio is made from: file bytes (and segment bounds) or memory.

        Cached transcripts are reused only while it stays the same, so editing or fixing an
        audio file makes the next evaluation decode it again.
        """
        digest = hashlib.sha256()
        if self.audio_array is not None:
            array = np.ascontiguousarray(self.audio_array)
            digest.update(f"array:{array.dtype}:{array.shape}".encode())
            digest.update(array.tobytes())
        elif self.audio_bytes is not None:
            digest.update(b"bytes:" + self.audio_bytes)
        elif self.path is not None:
            digest.update(f"file:{file_fingerprint(self.path)}:{self.start}:{self.end}".encode())
        return digest.hexdigest()[:16]

    def load_audio(self) -> np.ndarray:
        """The utterance's audio as 16 kHz mono float32 (raises AudioError when unusable)."""
        if self.audio_array is not None:
            array = np.asarray(self.audio_array)
            if array.ndim != 1 or not array.size or not np.issubdtype(array.dtype, np.floating):
                raise AudioError(f"utterance {self.id}: audio_array must be non-empty 16 kHz mono float samples "
                                 f"(1-D), got {array.dtype} of shape {array.shape}; resample and mix down first")
            return array.astype(np.float32, copy=False)
        if self.audio_bytes is not None:
            return _decode_bytes(self.audio_bytes, self.id)
        if self.path is None:
            raise AudioError(f"utterance {self.id} has no audio source")
        audio = read_audio(self.path)
        if self.start is not None:
            first = int(round(self.start * SAMPLE_RATE))
            last = None if self.end is None else int(round(self.end * SAMPLE_RATE))
            audio = audio[first:last]
            if audio.size == 0:
                raise AudioError(f"segment {self.start}-{self.end}s of {self.path} is empty")
        return audio


def _where(utt: Utterance) -> str:
    """Where an utterance comes from, for error messages."""
    if utt.path is None:
        return "memory" if utt.audio_array is not None else "the hub copy"
    return str(utt.path) + ("" if utt.start is None else f" at {utt.start}-{utt.end}s")


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """A transcript or metadata file as text; a CorpusError naming the file when it is not valid text."""
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        raise CorpusError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); "
                          "re-save it as UTF-8") from err


def _csv_rows(path: Path, required: tuple[str, ...], **reader_args) -> list[dict[str, str]]:
    """Rows of a CSV/TSV file with every `required` column filled; CorpusError naming file and line otherwise."""
    # utf-8-sig: spreadsheet programs often start metadata.csv with a byte-order mark.
    text = _read_text(path, encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""), **reader_args)
    if reader.fieldnames is None:
        raise CorpusError(f"{path} is empty (no header line)")
    rows = []
    for row in reader:
        if None in row:
            raise CorpusError(f"{path}:{reader.line_num}: more fields than the header's {len(reader.fieldnames)}")
        missing = [name for name in required if row.get(name) is None]
        if missing:
            raise CorpusError(f"{path}:{reader.line_num}: too few fields (no {', '.join(missing)})")
        rows.append(row)
    return rows


def _decode_bytes(data: bytes, name: str) -> np.ndarray:
    """Decode encoded audio bytes (flac, wav, mp3, ...) to 16 kHz mono float32."""
    import soundfile

    try:
        samples, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32")
    except Exception as err:
        raise AudioError(f"cannot decode audio of {name}: {err}") from err
    if samples.size == 0:
        raise AudioError(f"audio of {name} is empty (0 samples)")
    return to_mono_16k(samples, sample_rate)


@dataclass(frozen=True)
class Corpus:
    """A named corpus split and its utterances, with where they were read from."""

    name: str  # "librispeech:test-other"
    utterances: list[Utterance]
    source: str  # a folder, or "hub:<dataset id>"
    n_empty_reference: int = 0

    def __post_init__(self) -> None:
        # Two utterances with one id would share a cache record and a bootstrap row: refuse before decoding.
        seen: dict[str, Utterance] = {}
        for utt in self.utterances:
            if utt.id in seen:
                raise CorpusError(f"{self.name}: utterance id {utt.id!r} appears twice, in {_where(seen[utt.id])} "
                                  f"and {_where(utt)}; ids must be unique")
            seen[utt.id] = utt

    def __len__(self) -> int:
        return len(self.utterances)

    def subset(self, ids: set[str] | list[str]) -> Corpus:
        """The same corpus restricted to the given utterance ids (order kept)."""
        wanted = set(ids)
        unknown = wanted - {u.id for u in self.utterances}
        if unknown:
            raise CorpusError(f"{self.name} has no utterance(s) {sorted(unknown)[:5]}")
        kept = [u for u in self.utterances if u.id in wanted]
        return Corpus(name=self.name, utterances=kept, source=self.source, n_empty_reference=0)

    def describe(self) -> dict:
        """Counts a reader wants before any decoding: utterances, speakers, where from."""
        speakers = {u.speaker for u in self.utterances if u.speaker is not None}
        return {"corpus": self.name, "utterances": len(self.utterances),
                "speakers": len(speakers) or None, "empty references dropped": self.n_empty_reference,
                "source": self.source}


# ---- local layouts -------------------------------------------------------------------


def read_librispeech(split_dir: Path) -> list[Utterance]:
    """LibriSpeech native layout: <speaker>/<chapter>/<id>.flac beside <spk>-<chap>.trans.txt."""
    utterances = []
    for trans in sorted(split_dir.glob("*/*/*.trans.txt")):
        for line in _read_text(trans).splitlines():
            if not line.strip():
                continue
            utt_id, _, text = line.partition(" ")
            utterances.append(
                Utterance(
                    id=utt_id,
                    reference=text.strip(),
                    speaker=utt_id.split("-")[0],
                    path=trans.parent / f"{utt_id}.flac",
                )
            )
    return utterances


def read_audiofolder(split_dir: Path, speaker_from_name: Callable[[str], str] | None = None) -> list[Utterance]:
    """Hugging Face `audiofolder` layout: metadata.csv (file_name, transcription|text, ...)."""
    metadata = split_dir / "metadata.csv"
    header = next(csv.reader(io.StringIO(_read_text(metadata, encoding="utf-8-sig"))), [])
    if "file_name" not in header:
        raise CorpusError(f"{metadata} has no 'file_name' column (columns: {header})")
    text_column = next((name for name in ("transcription", "text", "sentence") if name in header), None)
    if text_column is None:
        raise CorpusError(f"{metadata} has no transcription/text/sentence column (columns: {header})")
    utterances = []
    for row in _csv_rows(metadata, ("file_name", text_column)):
        text = row[text_column]
        name = row["file_name"]
        speaker = row.get("speaker_id") or row.get("speaker")
        if speaker is None and speaker_from_name is not None:
            speaker = speaker_from_name(name)
        utterances.append(
            Utterance(id=Path(name).stem, reference=text.strip(), speaker=speaker, path=split_dir / name)
        )
    return utterances


def read_tedlium_stm(split_dir: Path) -> list[Utterance]:
    """TED-LIUM layout: stm/<talk>.stm segment lines over sph/<talk>.sph recordings."""
    utterances = []
    for stm in sorted(split_dir.glob("stm/*.stm")):
        for number, line in enumerate(_read_text(stm).splitlines()):
            if not line.strip() or line.startswith(";;"):
                continue
            parts = line.split(maxsplit=6)
            if len(parts) < 6:
                raise CorpusError(f"{stm}:{number + 1}: too few fields ({len(parts)}; an stm line has at least 6)")
            talk, _channel, speaker, start, end = parts[:5]
            try:
                start_s, end_s = float(start), float(end)
            except ValueError:
                raise CorpusError(f"{stm}:{number + 1}: start and end must be seconds, got {start!r} and {end!r}") \
                    from None
            text = parts[6] if len(parts) > 6 else ""
            if text.strip() == "ignore_time_segment_in_scoring":
                continue
            utterances.append(
                Utterance(
                    id=f"{talk}-{number:04d}",
                    reference=text.replace("<unk>", "").strip(),
                    speaker=speaker,
                    path=split_dir / "sph" / f"{talk}.sph",
                    start=start_s,
                    end=end_s,
                )
            )
    return utterances


def read_commonvoice_tsv(split_dir: Path, split: str) -> list[Utterance]:
    """Common Voice layout: <split>.tsv (client_id, path, sentence) beside clips/."""
    tsv = split_dir / f"{split}.tsv"
    rows = _csv_rows(tsv, ("path", "sentence"), delimiter="\t", quoting=csv.QUOTE_NONE)
    return [
        Utterance(
            id=Path(row["path"]).stem,
            reference=row["sentence"].strip(),
            speaker=row.get("client_id"),
            path=split_dir / "clips" / row["path"],
        )
        for row in rows
    ]


def _fsdd_speaker(file_name: str) -> str:
    """FSDD names files <digit>_<speaker>_<take>.wav."""
    return Path(file_name).stem.split("_")[1]


@dataclass(frozen=True)
class CorpusSpec:
    """Where a named corpus lives locally (folder names under a data root) and on the hub."""

    folders: tuple[str, ...]  # tried in order under the data root; "{split}" is filled in
    reader: Callable[[Path, str], list[Utterance]]
    marker: str  # a file or glob that proves a folder holds this layout
    hub_id: str | None = None
    hub_config: Callable[[str], tuple[str | None, str]] | None = None  # split -> (config, hub split)
    hub_text: str = "text"
    splits: tuple[str, ...] = ("test",)


CORPORA: dict[str, CorpusSpec] = {
    "librispeech": CorpusSpec(
        folders=("LibriSpeech/{split}", "librispeech/{split}", "{split}"),
        reader=lambda d, s: read_librispeech(d),
        marker="*/*/*.trans.txt",
        hub_id="openslr/librispeech_asr",
        hub_config=lambda s: (s.split("-")[1], s.split("-")[0]),  # test-other -> ("other", "test")
        hub_text="text",
        splits=("test-other", "test-clean", "dev-other", "dev-clean"),
    ),
    "earnings22": CorpusSpec(
        folders=("earnings22/{split}",),
        reader=lambda d, s: read_audiofolder(d),
        marker="metadata.csv",
        hub_id="distil-whisper/earnings22",
        hub_config=lambda s: ("chunked", s),
        hub_text="transcription",
    ),
    "tedlium": CorpusSpec(
        folders=("TEDLIUM_release-3/legacy/{split}", "tedlium/{split}", "TEDLIUM_release-3/{split}"),
        reader=lambda d, s: read_tedlium_stm(d),
        marker="stm/*.stm",
        hub_id="distil-whisper/tedlium",
        hub_config=lambda s: (None, s),
        hub_text="text",
    ),
    "commonvoice": CorpusSpec(
        folders=("commonvoice/en", "commonvoice", "cv-corpus/en"),
        reader=read_commonvoice_tsv,
        marker="{split}.tsv",
        hub_id="mozilla-foundation/common_voice_17_0",
        hub_config=lambda s: ("en", s),
        hub_text="sentence",
    ),
    "fsdd": CorpusSpec(
        folders=("fsdd/{split}",),
        reader=lambda d, s: read_audiofolder(d, speaker_from_name=_fsdd_speaker),
        marker="metadata.csv",
    ),
    "librivox-mini": CorpusSpec(
        folders=("librivox-mini/{split}",),
        reader=lambda d, s: read_audiofolder(d),
        marker="metadata.csv",
    ),
}


def parse_corpus_name(name: str) -> tuple[str, str]:
    """Split 'NAME:SPLIT' and check both parts against the known corpora."""
    corpus, sep, split = name.partition(":")
    if not sep or not split:
        raise CorpusError(f"corpus must be named NAME:SPLIT (e.g. librispeech:test-other), got {name!r}")
    if corpus not in CORPORA:
        raise CorpusError(f"unknown corpus {corpus!r}; known: {', '.join(sorted(CORPORA))}")
    if split not in CORPORA[corpus].splits:
        raise CorpusError(f"unknown split {split!r} of {corpus}; known: {', '.join(CORPORA[corpus].splits)}")
    return corpus, split


def default_data_root() -> Path | None:
    """The data root from $PRUNELIB_DATA, or None."""
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


def find_local(name: str, data_root: str | Path | None) -> Path | None:
    """The folder under `data_root` that holds corpus `name` in its native layout, or None."""
    corpus, split = parse_corpus_name(name)
    if data_root is None:
        return None
    root = Path(data_root)
    spec = CORPORA[corpus]
    marker = spec.marker.format(split=split)
    folders = [folder.format(split=split) for folder in spec.folders]
    # The root itself counts only when its own path ends in one of the corpus's folder names
    # (".../LibriSpeech/test-other"): a folder of another corpus or split must not stand in.
    candidates = [root / folder for folder in folders]
    candidates += [root for folder in folders if root.absolute().parts[-len(Path(folder).parts):] == Path(folder).parts]
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob(marker)):
            return candidate
    markers = {marker} | {other.marker for other in CORPORA.values() if "{" not in other.marker}
    if any(any(root.glob(pattern)) for pattern in markers):
        raise CorpusError(
            f"data root {root} looks like a corpus folder itself, not one holding {name}: expected "
            + " or ".join(f"{root / folder}/{marker}" for folder in folders)
            + "; pass the folder above the corpora as --data-root")
    return None


def load_corpus(
    name: str,
    data_root: str | Path | None = None,
    limit: int | None = None,
    speakers: set[str] | None = None,
) -> Corpus:
    """Load corpus `name` ('NAME:SPLIT'): from `data_root` (else $PRUNELIB_DATA), else the hub.

    `limit` keeps the first N utterances in the corpus's sorted order; `speakers` keeps only
    those speakers. Empty references are dropped here, counted and logged.
    """
    corpus, split = parse_corpus_name(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise CorpusError(f"limit must be a whole number of utterances, at least 1, got {limit!r}")
    if data_root is None:
        data_root = default_data_root()
    elif not Path(data_root).is_dir():
        raise CorpusError(f"data root {data_root} does not exist or is not a folder")
    folder = find_local(name, data_root)
    if folder is not None:
        utterances = CORPORA[corpus].reader(folder, split)
        source = str(folder)
    else:
        utterances, source = _load_from_hub(name, data_root)
    utterances.sort(key=lambda u: u.id)
    if speakers is not None:
        utterances = [u for u in utterances if u.speaker in speakers]
    empty = [u.id for u in utterances if not u.reference.strip()]
    if empty:
        log.warning("%s: %d utterance(s) with an empty reference skipped: %s", name, len(empty), ", ".join(empty[:5]))
        utterances = [u for u in utterances if u.reference.strip()]
    if limit is not None:
        utterances = utterances[:limit]
    if not utterances:
        raise CorpusError(f"{name} at {source} has no utterances")
    log.info("%s: %d utterances from %s", name, len(utterances), source)
    return Corpus(name=name, utterances=utterances, source=source, n_empty_reference=len(empty))


def _load_from_hub(name: str, data_root: str | Path | None) -> tuple[list[Utterance], str]:
    """Read the corpus from the Hugging Face hub through `datasets`, decoding audio ourselves."""
    corpus, split = parse_corpus_name(name)
    spec = CORPORA[corpus]
    where_local = (
        f"no {corpus} layout under data root {data_root} (looked for "
        + ", ".join(f.format(split=split) for f in spec.folders)
        + ")"
        if data_root is not None
        else f"no data root given (--data-root or ${DATA_ENV})"
    )
    if spec.hub_id is None:
        raise CorpusError(f"cannot find {name}: {where_local}, and it has no hub copy")
    config, hub_split = spec.hub_config(split)
    hub_name = f"{spec.hub_id}{'/' + config if config else ''} [{hub_split}]"
    if not hub_reachable():
        raise CorpusError(f"cannot find {name}: {where_local}; and the hub copy {hub_name} cannot be "
                          f"downloaded ({hub_endpoint()} is unreachable or HF_HUB_OFFLINE is set)")
    try:
        import datasets

        dataset = datasets.load_dataset(spec.hub_id, config, split=hub_split)
        # datasets' own audio decoding needs torchcodec; decode the bytes with soundfile instead.
        dataset = dataset.cast_column("audio", datasets.Audio(decode=False))
    except Exception as err:
        raise CorpusError(
            f"cannot find {name}: {where_local}; and the hub copy {hub_name} could not be loaded "
            f"({type(err).__name__}: {err})"
        ) from err
    utterances = []
    for index, row in enumerate(dataset):
        audio = row["audio"]
        data = audio.get("bytes") or Path(audio["path"]).read_bytes()
        utt_id = str(row.get("id") or row.get("segment_id") or f"{corpus}-{index:06d}")
        speaker = row.get("speaker_id") or row.get("client_id")
        utterances.append(
            Utterance(
                id=utt_id,
                reference=str(row[spec.hub_text]),
                speaker=None if speaker is None else str(speaker),
                audio_bytes=data,
            )
        )
    return utterances, f"hub:{spec.hub_id}"
