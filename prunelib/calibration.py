"""Calibration data for gradient scores and activation statistics: the split, the labels, the examples."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prunelib.audio import SAMPLE_RATE, WINDOW_SECONDS, AudioError
from prunelib.corpora import Corpus
from prunelib.evaluate import evaluate
from prunelib.models import LoadedModel
from prunelib.transcribe import Decoding

LABELS = ("reference", "pseudo")


def split_calibration(corpus: Corpus, n_speakers: int, seed: int) -> tuple[Corpus, Corpus]:
    """(calibration, evaluation): `n_speakers` speakers drawn by seed, the rest for evaluation.

    When any speaker is unknown each utterance counts as its own speaker, so the split is
    utterance-disjoint instead (and `n_speakers` utterances are drawn).
    """
    by_speaker = all(u.speaker is not None for u in corpus.utterances)
    units = sorted({u.speaker if by_speaker else u.id for u in corpus.utterances})
    if not 1 <= n_speakers < len(units):
        raise ValueError(f"n_speakers must be in [1, {len(units) - 1}] for {corpus.name} "
                         f"({len(units)} {'speakers' if by_speaker else 'utterances'}), got {n_speakers}")
    chosen = set(np.random.default_rng(seed).choice(units, size=n_speakers, replace=False).tolist())
    calibration = [u.id for u in corpus.utterances if (u.speaker if by_speaker else u.id) in chosen]
    evaluation = [u.id for u in corpus.utterances if u.id not in set(calibration)]
    return corpus.subset(calibration), corpus.subset(evaluation)


def seeded_order(corpus: Corpus, seed: int) -> list[str]:
    """The corpus's utterance ids in a seeded random order (prefixes are nested subsets)."""
    ids = [u.id for u in corpus.utterances]
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


def fits_window(audio: np.ndarray) -> bool:
    """Whether audio fits the encoder's 30 s window: longer audio would be cut while its label is not."""
    return len(audio) <= WINDOW_SECONDS * SAMPLE_RATE


def too_long(corpus: Corpus) -> list[str]:
    """Ids of the utterances that do not fit the encoder's window, and so never calibrate."""
    return [u.id for u in corpus.utterances if not fits_window(u.load_audio())]


def sentence_case(text: str) -> str:
    """Write a single-case reference the way Whisper writes: first letter capital, "I" capital.

    LibriSpeech references are UPPER CASE, Earnings-22 lower case, both without punctuation.
    We lower-case, capitalise the first letter and the pronoun I (with I'm, I'll, I've, I'd),
    and add no punctuation (we cannot know it; pseudo labels carry the model's own).
    Mixed-case text is taken to be written already and returned unchanged.
    """
    text = " ".join(text.split())
    if text != text.upper() and text != text.lower():
        return text
    text = re.sub(r"\bi\b", "I", text.lower())
    return text[:1].upper() + text[1:]


def label_texts(loaded: LoadedModel, corpus: Corpus, labels: str = "reference",
                batch_size: int = 16, progress: bool = False) -> dict[str, str]:
    """Label text per utterance id: sentence-cased references, or the model's greedy transcripts.

    Pseudo labels come from prunelib's cached `evaluate` (standard pipeline, English forced),
    so a second call reads them from results/cache instead of decoding again.
    """
    if labels == "reference":
        return {u.id: sentence_case(u.reference) for u in corpus.utterances}
    if labels == "pseudo":
        records = evaluate(loaded, corpus, Decoding(language="en", batch_size=batch_size), progress=progress).records
        return {r["id"]: r["hypothesis"] for r in records}
    raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")


def prefix_ids(loaded: LoadedModel) -> list[int]:
    """Decoder prompt: <|startoftranscript|>[<|en|><|transcribe|>]<|notimestamps|>."""
    generation = loaded.model.generation_config
    prefix = [generation.decoder_start_token_id]
    if loaded.is_multilingual:  # English-only checkpoints have no language or task tokens
        prefix += [generation.lang_to_id["<|en|>"], generation.task_to_id["transcribe"]]
    return prefix + [generation.no_timestamps_token_id]


@dataclass(frozen=True)
class Example:
    """One teacher-forced calibration example: features, decoder inputs and shifted labels."""

    id: str
    input_features: torch.Tensor  # (mel bins, frames), one utterance
    decoder_input_ids: torch.Tensor  # prefix + text tokens
    labels: torch.Tensor  # same length: -100 under the prefix, then text tokens and <|endoftext|>


def make_example(utt_id: str, input_features: torch.Tensor, prefix: list[int], text_ids: list[int],
                 eos_id: int) -> Example:
    """Align prompt and targets: position t predicts token t+1; the prompt itself is not scored."""
    decoder_input_ids = torch.tensor(prefix + text_ids)
    # Passing decoder_input_ids explicitly stops transformers from shifting `labels` right
    # itself (which would turn the -100s under the prompt into pad tokens of the input).
    labels = torch.tensor([-100] * (len(prefix) - 1) + text_ids + [eos_id])
    return Example(utt_id, input_features, decoder_input_ids, labels)


def calibration_examples(loaded: LoadedModel, corpus: Corpus, texts: dict[str, str]) -> tuple[list[Example], list[str]]:
    """Tokenised examples of `corpus` in its order, and the ids skipped (over 30 s or unreadable)."""
    tokenizer, prefix = loaded.processor.tokenizer, prefix_ids(loaded)
    examples, skipped = [], []
    for utt in corpus.utterances:
        try:
            audio = utt.load_audio()
        except AudioError:
            skipped.append(utt.id)
            continue
        if not fits_window(audio):
            skipped.append(utt.id)
            continue
        features = loaded.processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        # Whisper writes every text with a leading space (" The cat ..."); tokenise it the same way.
        text_ids = tokenizer.encode(" " + texts[utt.id].strip(), add_special_tokens=False)
        examples.append(make_example(utt.id, features.input_features[0], prefix, text_ids, tokenizer.eos_token_id))
    return examples, skipped


def example_loss(model: nn.Module, example: Example) -> torch.Tensor:
    """Teacher-forced cross-entropy of one example, averaged over its scored tokens."""
    output = model(input_features=example.input_features[None], decoder_input_ids=example.decoder_input_ids[None],
                   labels=example.labels[None], use_cache=False)  # no key/value cache: nothing is generated
    return output.loss
