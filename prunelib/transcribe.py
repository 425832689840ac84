"""Batched greedy Whisper transcription under the standard or the paper's decoding pipeline."""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import transformers
from tqdm import tqdm

from prunelib.audio import SAMPLE_RATE, AudioError
from prunelib.corpora import Utterance
from prunelib.models import LoadedModel

log = logging.getLogger(__name__)

CHUNK_SECONDS = 30.0  # Whisper's encoder reads exactly 30 s of log-mel features


@dataclass(frozen=True)
class Decoding:
    """How to decode: which pipeline, batch size, beams, and what to do past 30 s."""

    language: str = "en"  # "en" forces English + transcribe (standard); "auto" forces nothing (the paper's)
    batch_size: int = 16  # the paper's batch size
    num_beams: int = 1  # greedy, as the paper
    long_form: bool = True  # decode >30 s audio sequentially; False truncates at 30 s as the paper's code did
    max_new_tokens: int | None = None  # None: the checkpoint's generation config decides

    def __post_init__(self) -> None:
        if not self.language or not isinstance(self.language, str):
            raise ValueError(f"language must be 'auto' or a language code such as 'en', got {self.language!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {self.num_beams}")

    def key(self) -> dict:
        """The settings that change transcripts (batch size does not, so it is left out)."""
        settings = asdict(self)
        settings.pop("batch_size")
        return settings


def generate_kwargs(loaded: LoadedModel, decoding: Decoding) -> dict:
    """Keyword arguments for `model.generate` that implement `decoding` on this checkpoint."""
    generation_config = copy.deepcopy(loaded.model.generation_config)
    # The paper sets forced_decoder_ids = None so nothing is forced; clearing it on a copy
    # keeps the loaded model's own config untouched.
    generation_config.forced_decoder_ids = None
    kwargs: dict = {"generation_config": generation_config, "num_beams": decoding.num_beams, "do_sample": False}
    if decoding.max_new_tokens is not None:
        kwargs["max_new_tokens"] = decoding.max_new_tokens
    if loaded.is_multilingual and decoding.language != "auto":
        kwargs["language"] = decoding.language
        kwargs["task"] = "transcribe"
    # English-only checkpoints have no language or task tokens: both pipelines coincide there.
    return kwargs


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' per-call generation notices for the duration of a transcription."""
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(previous)


def _language_of(ids: torch.Tensor, id_to_language: dict[int, str]) -> str | None:
    """The language token the decoder emitted (or was forced to), if any."""
    for token in ids.tolist():
        if token in id_to_language:
            return id_to_language[token]
    return None


def _load_all(utterances: Iterable[Utterance]) -> tuple[list[tuple[Utterance, np.ndarray]], list[dict]]:
    """Read every utterance's audio; unreadable ones become error records instead of failures."""
    loaded, failed = [], []
    for utt in utterances:
        try:
            loaded.append((utt, utt.load_audio()))
        except AudioError as err:
            log.warning("skipping %s: %s", utt.id, err)
            failed.append(
                {"id": utt.id, "reference": utt.reference, "hypothesis": "", "speaker": utt.speaker,
                 "seconds": 0.0, "decode_seconds": 0.0, "error": str(err)}
            )
    return loaded, failed


def transcribe(
    loaded: LoadedModel,
    utterances: list[Utterance],
    decoding: Decoding = Decoding(),
    progress: bool = True,
    on_batch: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Transcribe utterances; one record per utterance (see prunelib.scoring for the keys).

    Utterances are sorted by length so batches pad little; audio over 30 s is decoded
    long-form one utterance at a time (or truncated when `decoding.long_form` is False).
    """
    model, processor = loaded.model, loaded.processor
    lang_to_id = getattr(model.generation_config, "lang_to_id", None) or {}
    id_to_language = {token: name.strip("<|>") for name, token in lang_to_id.items()}
    kwargs = generate_kwargs(loaded, decoding)
    audio_items, records = _load_all(utterances)
    if on_batch is not None and records:
        on_batch(list(records))
    audio_items.sort(key=lambda item: len(item[1]), reverse=True)
    limit = int(CHUNK_SECONDS * SAMPLE_RATE)
    long_items = [item for item in audio_items if len(item[1]) > limit and decoding.long_form]
    short_items = [item for item in audio_items if not (len(item[1]) > limit and decoding.long_form)]
    batches = [long_items[i : i + 1] for i in range(len(long_items))]
    batches += [short_items[i : i + decoding.batch_size] for i in range(0, len(short_items), decoding.batch_size)]
    device = next(model.parameters()).device

    bar = tqdm(total=len(audio_items), desc=f"transcribe ({decoding.language})", unit="utt", disable=not progress)
    for batch in batches:
        arrays = [audio for _, audio in batch]
        is_long = len(arrays[0]) > limit and decoding.long_form
        if is_long:
            features = processor.feature_extractor(
                arrays, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                truncation=False, padding="longest", return_attention_mask=True,
            )
            extra = {"attention_mask": features.attention_mask.to(device), "return_timestamps": True}
        else:
            features = processor.feature_extractor(arrays, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            extra = {}
        started = time.perf_counter()
        with torch.inference_mode(), _quiet_transformers():
            ids = model.generate(features.input_features.to(device), **kwargs, **extra)
        elapsed = time.perf_counter() - started
        sequences = ids["sequences"] if isinstance(ids, dict) else ids
        texts = processor.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        batch_records = []
        for (utt, audio), text, seq in zip(batch, texts, sequences):
            seconds = len(audio) / SAMPLE_RATE
            batch_records.append(
                {
                    "id": utt.id,
                    "reference": utt.reference,
                    "hypothesis": text.strip(),
                    "speaker": utt.speaker,
                    "seconds": seconds,
                    "decode_seconds": elapsed / len(batch),
                    "language": _language_of(seq[:4], id_to_language),
                    "long_form": is_long,
                    "truncated": seconds > CHUNK_SECONDS and not decoding.long_form,
                }
            )
        records.extend(batch_records)
        if on_batch is not None:
            on_batch(batch_records)
        bar.update(len(batch))
    bar.close()
    order = {utt.id: index for index, utt in enumerate(utterances)}
    records.sort(key=lambda record: order[record["id"]])
    return records
