"""Utterance-level comparisons: the largest differences and how much of a change one utterance carries."""
from __future__ import annotations

import math

import pytest

from prunelib.analysis import largest_differences, single_utterance_share


def _records(hypotheses: dict[str, str]) -> list[dict]:
    references = {"a": "red green blue pink", "b": "cat dog cow hen", "c": "sun moon"}
    return [{"id": k, "reference": references[k], "hypothesis": h, "speaker": None} for k, h in hypotheses.items()]


DENSE = _records({"a": "red green blue pink", "b": "cat dog cow hen", "c": "sun sun sun sun sun"})


def test_one_utterance_can_carry_the_whole_gain():
    # The pruned system stops looping on c (4 errors fewer) but makes a new error on a.
    pruned = _records({"a": "red green blue ink", "b": "cat dog cow hen", "c": "sun moon"})
    share = single_utterance_share(DENSE, pruned)
    assert share["top_utterance"] == "c"
    assert share["top_points"] == pytest.approx(100 * -4 / 10)
    assert share["delta_without_top"] == pytest.approx(100 * 1 / 8)  # without c the change is a loss


def test_no_shared_utterances_give_no_share():
    share = single_utterance_share(DENSE, [])
    assert share["top_utterance"] is None and math.isnan(share["delta_without_top"])


def test_largest_differences_are_sorted_by_size():
    pruned = _records({"a": "red green blue ink", "b": "cat dog cow hen", "c": "sun moon"})
    table = largest_differences(DENSE, pruned, names=("dense", "pruned"), top=2)
    assert table["id"].tolist() == ["c", "a"]
    assert table["extra_errors"].tolist() == [-4, 1]
