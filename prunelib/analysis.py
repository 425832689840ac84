"""Compare systems utterance by utterance: where they differ, and why."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from prunelib.scoring import utterance_counts


def utterance_wer(records: Sequence[Mapping]) -> pd.DataFrame:
    """Per-utterance errors, reference words and WER (percent), indexed by id."""
    counts = utterance_counts(records).set_index("id")
    counts["errors"] = counts[["substitutions", "insertions", "deletions"]].sum(axis=1)
    counts["wer"] = 100.0 * counts["errors"] / counts["ref_words"]
    return counts


def largest_differences(
    records_a: Sequence[Mapping], records_b: Sequence[Mapping], names: tuple[str, str] = ("a", "b"), top: int = 5
) -> pd.DataFrame:
    """The utterances whose error counts differ most between two systems, with both transcripts."""
    a, b = utterance_wer(records_a), utterance_wer(records_b)
    shared = a.index.intersection(b.index)
    by_id_a = {r["id"]: r for r in records_a}
    by_id_b = {r["id"]: r for r in records_b}
    rows = []
    for utt_id in shared:
        rows.append(
            {
                "id": utt_id,
                "extra_errors": int(b.at[utt_id, "errors"] - a.at[utt_id, "errors"]),
                f"wer_{names[0]}": round(a.at[utt_id, "wer"], 1),
                f"wer_{names[1]}": round(b.at[utt_id, "wer"], 1),
                f"language_{names[1]}": by_id_b[utt_id].get("language"),
                "reference": by_id_a[utt_id]["reference"],
                f"hyp_{names[0]}": by_id_a[utt_id]["hypothesis"],
                f"hyp_{names[1]}": by_id_b[utt_id]["hypothesis"],
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.reindex(frame["extra_errors"].abs().sort_values(ascending=False, kind="stable").index)
    return frame.head(top).reset_index(drop=True)


def single_utterance_share(dense_records: Sequence[Mapping], records: Sequence[Mapping]) -> dict:
    """How much of a WER change one utterance carries.

    The utterance whose error count moved most against dense, the points of corpus WER it alone
    adds (negative: it removes them), and the change measured without it. A "gain" that flips sign
    without one utterance is that utterance's story, not the model's.
    """
    dense, other = utterance_wer(dense_records), utterance_wer(records)
    shared = dense.index.intersection(other.index)
    if shared.empty:
        return {"top_utterance": None, "top_points": float("nan"), "delta_without_top": float("nan")}
    dense, other = dense.loc[shared], other.loc[shared]
    extra = other["errors"] - dense["errors"]
    top = extra.abs().idxmax()
    words = dense["ref_words"].sum()
    rest = words - dense.at[top, "ref_words"]
    return {"top_utterance": top, "top_points": 100.0 * extra[top] / words,
            "delta_without_top": 100.0 * (extra.sum() - extra[top]) / rest if rest else float("nan")}
