"""Normalise transcripts and score per-utterance ASR results.

Both sides go through Whisper's English text normaliser; word and character
edit operations come from jiwer. Corpus rates are total errors over total
reference units, reported in percent, with 95% percentile bootstrap intervals
that resample speaker blocks when at least MIN_SPEAKER_BLOCKS speakers are known
(utterances from one speaker are correlated, so resampling them independently
would understate the uncertainty), and utterances otherwise: a block bootstrap
over one or a few speakers is degenerate (one speaker: every resample is the
whole corpus, a zero-width interval) or unstable. `ci_unit` says which was used.
Fewer than two resampling units give no interval at all (NaN), never a zero-width
one. Records whose audio could not be read (`error` key) and records
whose reference is empty after normalisation are skipped and counted.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping

import jiwer
import numpy as np
import pandas as pd
from whisper_normalizer.english import EnglishTextNormalizer

COUNT_COLUMNS = [
    "id", "speaker", "ref_words", "hyp_words", "hits", "substitutions",
    "insertions", "deletions", "ref_chars", "char_errors",
]

# Fewer speakers than this and the block bootstrap has too few blocks to say anything
# (one speaker: a single block, so every resample is the corpus itself); utterances are
# resampled instead. Ten is a round floor fixed before any result was looked at, not a tuned number.
MIN_SPEAKER_BLOCKS = 10

# Bound the size of one (draws x blocks) index matrix so thousands of
# utterances times thousands of draws do not need gigabytes at once.
_MAX_CELLS_PER_CHUNK = 2_000_000


@functools.lru_cache(maxsize=1)
def _normalizer() -> EnglishTextNormalizer:
    """The shared normaliser; building it loads its spelling table from disk."""
    return EnglishTextNormalizer()


# References repeat across every system scored on a corpus, and the normaliser's
# regexes dominate scoring time, so finished strings are cached too.
@functools.lru_cache(maxsize=1 << 16)
def normalize_text(text: str) -> str:
    """Normalise one transcript with Whisper's English text normaliser."""
    return _normalizer()(text)


def _record_id(record: Mapping) -> str:
    """The record's id, or a ValueError when it has none."""
    if "id" not in record:
        raise ValueError(f"record without 'id': keys are {sorted(record)}")
    return str(record["id"])


def _text(record: Mapping, key: str) -> str:
    """The record's `key` text, or a ValueError naming the id and the key."""
    rid = _record_id(record)
    if key not in record:
        raise ValueError(f"record {rid!r} has no {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"record {rid!r}: {key!r} must be a str, got {type(value).__name__}")
    return value


def _prepare(records: Iterable[Mapping]) -> tuple[list[tuple[Mapping, str, str]], list[Mapping], int, int]:
    """Split records into scorable (record, ref, hyp) triples, decoded records, and skip counts."""
    scorable, decoded = [], []
    n_failed = n_empty = 0
    seen: set[str] = set()
    for record in records:
        rid = _record_id(record)
        # Duplicate ids would double-count an utterance and break pairing by id.
        if rid in seen:
            raise ValueError(f"duplicate record id {rid!r}")
        seen.add(rid)
        if record.get("error"):
            n_failed += 1
            continue
        ref = normalize_text(_text(record, "reference"))
        hyp = normalize_text(_text(record, "hypothesis"))
        decoded.append(record)
        if not ref.split():
            n_empty += 1
            continue
        scorable.append((record, ref, hyp))
    return scorable, decoded, n_empty, n_failed


def _edit_counts(alignments: list) -> np.ndarray:
    """Per-sentence [hits, substitutions, insertions, deletions] from jiwer alignments."""
    out = np.zeros((len(alignments), 4), dtype=np.int64)
    column = {"equal": 0, "substitute": 1, "insert": 2, "delete": 3}
    for row, chunks in enumerate(alignments):
        for chunk in chunks:
            # Inserted units exist only on the hypothesis side.
            if chunk.type == "insert":
                size = chunk.hyp_end_idx - chunk.hyp_start_idx
            else:
                size = chunk.ref_end_idx - chunk.ref_start_idx
            out[row, column[chunk.type]] += size
    return out


def _counts_frame(scorable: list[tuple[Mapping, str, str]]) -> pd.DataFrame:
    """The per-utterance count table for already normalised triples."""
    if not scorable:
        return pd.DataFrame({name: pd.Series(dtype=object if name in ("id", "speaker") else np.int64)
                             for name in COUNT_COLUMNS})
    refs = [ref for _, ref, _ in scorable]
    hyps = [hyp for _, _, hyp in scorable]
    # One jiwer call per unit for the whole list; the per-utterance split comes from alignments.
    words = _edit_counts(jiwer.process_words(refs, hyps).alignments)
    chars = _edit_counts(jiwer.process_characters(refs, hyps).alignments)
    frame = pd.DataFrame({
        "id": [str(rec["id"]) for rec, _, _ in scorable],
        "speaker": [rec.get("speaker") for rec, _, _ in scorable],
        "ref_words": words[:, 0] + words[:, 1] + words[:, 3],
        "hyp_words": words[:, 0] + words[:, 1] + words[:, 2],
        "hits": words[:, 0],
        "substitutions": words[:, 1],
        "insertions": words[:, 2],
        "deletions": words[:, 3],
        "ref_chars": chars[:, 0] + chars[:, 1] + chars[:, 3],
        "char_errors": chars[:, 1:].sum(axis=1),
    })
    return frame


def utterance_counts(records: Iterable[Mapping]) -> pd.DataFrame:
    """One row of word and character edit counts per scorable utterance."""
    scorable, _, _, _ = _prepare(records)
    return _counts_frame(scorable)


def resampling_unit(counts_df: pd.DataFrame, by_speaker: bool = True) -> str:
    """'speaker' when speaker blocks are asked for and MIN_SPEAKER_BLOCKS speakers are known, else 'utterance'."""
    if by_speaker and counts_df["speaker"].dropna().nunique() >= MIN_SPEAKER_BLOCKS:
        return "speaker"
    return "utterance"


def _blocks(counts_df: pd.DataFrame, unit: str) -> np.ndarray:
    """Resampling block label per row: the speaker (unit 'speaker'), else the utterance itself."""
    ids = counts_df["id"].astype(str).to_numpy()
    if unit == "utterance":
        return ids
    # An utterance without a speaker is its own block, kept apart from speaker names.
    known = counts_df["speaker"].notna().to_numpy()
    return np.where(known, "spk:" + counts_df["speaker"].astype(str).to_numpy(), "utt:" + ids)


def _block_sums(counts_df: pd.DataFrame, columns: list[str], unit: str) -> np.ndarray:
    """Column sums per resampling block, shape (n_blocks, len(columns))."""
    labels = _blocks(counts_df, unit)
    _, inverse = np.unique(labels, return_inverse=True)
    values = counts_df[columns].to_numpy(dtype=np.float64)
    sums = np.zeros((inverse.max() + 1, len(columns)))
    np.add.at(sums, inverse, values)
    return sums


def _resampled_sums(block_sums: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Totals of each column over `n_boot` resamples of blocks with replacement, shape (n_boot, k)."""
    rng = np.random.default_rng(seed)
    n_blocks = block_sums.shape[0]
    chunk = max(1, _MAX_CELLS_PER_CHUNK // n_blocks)
    parts = []
    for start in range(0, n_boot, chunk):
        draws = rng.integers(0, n_blocks, size=(min(chunk, n_boot - start), n_blocks))
        parts.append(block_sums[draws].sum(axis=1))
    return np.concatenate(parts, axis=0)


def _interval(values: np.ndarray, level: float, n_blocks: int) -> list[float]:
    """The central percentile interval of `values` at `level`; NaN when fewer than two blocks were resampled."""
    if n_blocks < 2:
        return [math.nan, math.nan]
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


_MEASURES = {
    "wer": (["substitutions", "insertions", "deletions"], "ref_words"),
    "cer": (["char_errors"], "ref_chars"),
}


def bootstrap_ci(counts_df: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                 by_speaker: bool = True, level: float = 0.95, measure: str = "wer") -> list[float]:
    """Percentile bootstrap interval [lo, hi] in percent for the corpus WER (or CER).

    Resamples speakers or utterances as `resampling_unit` decides; [nan, nan] for one utterance.
    """
    if len(counts_df) == 0:
        raise ValueError("bootstrap_ci needs at least one scorable utterance")
    error_columns, total_column = _MEASURES[measure]
    sums = _block_sums(counts_df, error_columns + [total_column], resampling_unit(counts_df, by_speaker))
    sums = np.column_stack([sums[:, :-1].sum(axis=1), sums[:, -1]])
    totals = _resampled_sums(sums, n_boot, seed)
    return _interval(100.0 * totals[:, 0] / totals[:, 1], level, len(sums))


def _total_seconds(records: list[Mapping], key: str) -> float:
    """Sum of `key` over records; NaN when any record lacks it, so RTFx cannot be silently wrong."""
    return float(sum(float(rec[key]) if rec.get(key) is not None else math.nan for rec in records))


def score(records: Iterable[Mapping], n_boot: int = 1000, seed: int = 0) -> dict:
    """Corpus WER/CER in percent with bootstrap intervals, error types, skip counts and RTFx."""
    scorable, decoded, n_empty, n_failed = _prepare(records)
    if not scorable:
        raise ValueError(f"no scorable utterances (n_failed={n_failed}, n_empty_reference={n_empty})")
    counts = _counts_frame(scorable)
    ref_words = int(counts["ref_words"].sum())
    ref_chars = int(counts["ref_chars"].sum())
    subs, ins, dels = (int(counts[c].sum()) for c in ("substitutions", "insertions", "deletions"))
    char_errors = int(counts["char_errors"].sum())
    # Timing covers every decoded utterance, including those with empty references.
    seconds = _total_seconds(decoded, "seconds")
    decode_seconds = _total_seconds(decoded, "decode_seconds")
    speakers_known = bool(counts["speaker"].notna().any())
    return {
        "n": len(counts),
        "n_empty_reference": n_empty,
        "n_failed": n_failed,
        "n_speakers": int(counts["speaker"].nunique()) if speakers_known else None,
        "ci_unit": resampling_unit(counts),
        "wer": 100.0 * (subs + ins + dels) / ref_words,
        "wer_ci95": bootstrap_ci(counts, n_boot=n_boot, seed=seed, measure="wer"),
        "cer": 100.0 * char_errors / ref_chars,
        "cer_ci95": bootstrap_ci(counts, n_boot=n_boot, seed=seed, measure="cer"),
        "substitutions": subs,
        "insertions": ins,
        "deletions": dels,
        "sub_rate": 100.0 * subs / ref_words,
        "ins_rate": 100.0 * ins / ref_words,
        "del_rate": 100.0 * dels / ref_words,
        "ref_words": ref_words,
        "ref_chars": ref_chars,
        "char_errors": char_errors,
        "seconds": seconds,
        "decode_seconds": decode_seconds,
        "rtfx": seconds / decode_seconds if decode_seconds > 0 else math.nan,
    }


def paired_difference(records_a: Iterable[Mapping], records_b: Iterable[Mapping],
                      n_boot: int = 1000, seed: int = 0, by_speaker: bool = True) -> dict:
    """WER of system b minus system a in points on their shared utterance ids, with a paired bootstrap.

    Blocks are chosen as for `bootstrap_ci` (speakers when enough are known); `ci_unit` says which.
    """
    counts_a = utterance_counts(records_a)
    counts_b = utterance_counts(records_b)
    shared = counts_a.merge(counts_b, on="id", suffixes=("_a", "_b"), validate="one_to_one")
    if shared.empty:
        raise ValueError(f"no shared scorable utterance ids (a has {len(counts_a)}, b has {len(counts_b)})")
    for side in ("a", "b"):
        shared[f"errors_{side}"] = (shared[f"substitutions_{side}"] + shared[f"insertions_{side}"]
                                    + shared[f"deletions_{side}"])
    # Blocks follow system a's speaker labels; both systems decode the same utterances.
    shared["speaker"] = shared["speaker_a"]
    columns = ["errors_a", "ref_words_a", "errors_b", "ref_words_b"]
    unit = resampling_unit(shared, by_speaker)
    sums = _block_sums(shared, columns, unit)
    # Drawing the same blocks for both systems is what makes the bootstrap paired.
    totals = _resampled_sums(sums, n_boot, seed)
    diffs = 100.0 * (totals[:, 2] / totals[:, 3] - totals[:, 0] / totals[:, 1])
    full = sums.sum(axis=0)
    wer_a = 100.0 * full[0] / full[1]
    wer_b = 100.0 * full[2] / full[3]
    diff = wer_b - wer_a
    if len(sums) < 2:
        p_value = math.nan  # one block: every resample is the data itself, so no test
    elif diff > 0:
        p_value = min(1.0, 2.0 * float(np.mean(diffs <= 0)))
    elif diff < 0:
        p_value = min(1.0, 2.0 * float(np.mean(diffs >= 0)))
    else:
        p_value = 1.0
    return {
        "n": len(shared),
        "n_boot": n_boot,
        "n_only_a": len(counts_a) - len(shared),
        "n_only_b": len(counts_b) - len(shared),
        "wer_a": float(wer_a),
        "wer_b": float(wer_b),
        "diff": float(diff),
        "ci95": _interval(diffs, 0.95, len(sums)),
        "ci_unit": unit,
        "p_value": p_value,
    }
