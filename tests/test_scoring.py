"""Scoring: normalisation, WER/CER counts, skips, bootstrap intervals, paired differences."""
from __future__ import annotations

import math

import numpy as np
import pytest

from prunelib.scoring import (
    MIN_SPEAKER_BLOCKS,
    bootstrap_ci,
    normalize_text,
    paired_difference,
    score,
    utterance_counts,
)


def rec(rid, reference, hypothesis, speaker=None, seconds=1.0, decode_seconds=0.1, **extra):
    """A per-utterance record as the decoder writes it."""
    return dict(id=rid, reference=reference, hypothesis=hypothesis, speaker=speaker,
                seconds=seconds, decode_seconds=decode_seconds, **extra)


WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet".split()


def synthetic(n_speakers, per_speaker, speaker_error, seed=0, prefix=""):
    """Ten-word utterances where speaker s gets each word wrong with probability speaker_error[s]."""
    rng = np.random.default_rng(seed)
    records = []
    for s in range(n_speakers):
        for u in range(per_speaker):
            hyp = [("zulu" if rng.random() < speaker_error[s] else w) for w in WORDS]
            records.append(rec(f"{prefix}s{s}u{u}", " ".join(WORDS), " ".join(hyp),
                               speaker=f"{prefix}spk{s}"))
    return records


# --- normalisation -----------------------------------------------------------

def test_normaliser_equates_abbreviations_and_numbers():
    # Measured behaviour of Whisper's normaliser: "Mr." is expanded, spelled numbers
    # become digits, and the possessive "'s" is (wrongly but consistently) read as "is".
    assert normalize_text("Mr. Smith's 10 dollars") == "mister smith is $10"
    assert normalize_text("mister smith's ten dollars") == "mister smith is $10"
    result = score([rec("a", "Mr. Smith's 10 dollars", "mister smith's ten dollars")], n_boot=10)
    assert result["wer"] == 0.0 and result["cer"] == 0.0


def test_normaliser_works_offline_with_spelling_table_and_fillers():
    assert normalize_text("Colour, Um, the THEATRE!") == "color the theater"
    assert normalize_text("[noise]  ") == ""


def test_normaliser_merges_spoken_digit_sequences():
    # Measured: consecutive spelled digits become one numeral, so "one two three" is one word.
    assert normalize_text("one two three") == "123"
    assert score([rec("a", "one two three", "")], n_boot=10)["ref_words"] == 1


# --- counts and point estimates ---------------------------------------------

def test_single_insertion_is_one_third():
    result = score([rec("a", "the cat sat", "the cat sat down")], n_boot=50)
    assert result["insertions"] == 1
    assert result["substitutions"] == result["deletions"] == 0
    assert result["ref_words"] == 3
    assert result["wer"] == pytest.approx(100 / 3)
    assert result["ins_rate"] == pytest.approx(100 / 3)
    assert round(result["wer"], 2) == 33.33


def test_utterance_counts_columns_and_error_types():
    counts = utterance_counts([
        rec("sub", "a b c d", "a x c d", speaker="s1"),
        rec("del", "a b c d", "a b", speaker="s2"),
        rec("ins", "a b", "a b c d"),
    ]).set_index("id")
    assert counts.loc["sub", ["substitutions", "insertions", "deletions", "hits"]].tolist() == [1, 0, 0, 3]
    assert counts.loc["del", ["substitutions", "insertions", "deletions", "hits"]].tolist() == [0, 0, 2, 2]
    assert counts.loc["ins", ["substitutions", "insertions", "deletions", "hits"]].tolist() == [0, 2, 0, 2]
    assert counts["ref_words"].tolist() == [4, 4, 2]
    assert counts["hyp_words"].tolist() == [4, 2, 4]
    # Characters include the spaces of the normalised strings: "a b c d" has 7.
    assert counts["ref_chars"].tolist() == [7, 7, 3]
    assert counts["char_errors"].tolist() == [1, 4, 4]
    assert counts.loc["sub", "speaker"] == "s1"


def test_corpus_wer_pools_errors_not_mean_of_utterance_wers():
    # Utterance WERs are 100% (1 word) and 0% (9 words): pooled 10%, mean would be 50%.
    result = score([rec("short", "one", "two"), rec("long", " ".join(WORDS[:9]), " ".join(WORDS[:9]))],
                   n_boot=50)
    assert result["wer"] == pytest.approx(10.0)
    assert result["sub_rate"] == pytest.approx(10.0)


def test_cer_counts_character_edits():
    result = score([rec("a", "abcd", "abcf")], n_boot=10)
    assert result["char_errors"] == 1 and result["ref_chars"] == 4
    assert result["cer"] == pytest.approx(25.0)


def test_empty_references_and_failed_records_are_skipped_and_counted():
    records = [
        rec("ok", "the cat sat", "the cat sat down", seconds=2.0, decode_seconds=0.5),
        rec("empty", "[noise]", "hello there", seconds=1.0, decode_seconds=0.5),
        rec("blank", "", "", seconds=1.0, decode_seconds=0.5),
        {"id": "bad", "reference": "whatever", "speaker": None, "error": "could not read audio"},
    ]
    result = score(records, n_boot=20)
    assert (result["n"], result["n_empty_reference"], result["n_failed"]) == (1, 2, 1)
    assert result["wer"] == pytest.approx(100 / 3)
    assert list(utterance_counts(records)["id"]) == ["ok"]
    # Timing covers every decoded utterance: 4 s of audio in 1.5 s.
    assert result["seconds"] == 4.0 and result["decode_seconds"] == 1.5
    assert result["rtfx"] == pytest.approx(4.0 / 1.5)


def test_empty_hypothesis_is_all_deletions():
    result = score([rec("a", "red green blue", "")], n_boot=10)
    assert result["deletions"] == 3 and result["wer"] == 100.0


def test_missing_keys_and_no_scorable_records_raise():
    with pytest.raises(ValueError, match=r"'u7'.*'hypothesis'"):
        score([{"id": "u7", "reference": "a b", "speaker": None, "seconds": 1.0}])
    with pytest.raises(ValueError, match=r"'u8'.*'reference'"):
        utterance_counts([{"id": "u8", "hypothesis": "a b"}])
    with pytest.raises(ValueError, match="no scorable"):
        score([rec("e", "", "x")])
    with pytest.raises(ValueError, match="duplicate"):
        score([rec("d", "a", "a"), rec("d", "a", "b")])


def test_missing_timing_gives_nan_rtfx_not_a_wrong_number():
    result = score([{"id": "a", "reference": "a b", "hypothesis": "a b", "speaker": None}], n_boot=10)
    assert math.isnan(result["rtfx"])


def test_result_is_json_friendly():
    import json
    result = score(synthetic(3, 5, [0.1, 0.2, 0.3]), n_boot=50)
    json.dumps(result)
    # Three speakers are too few blocks: utterances are resampled, and the result says so.
    assert result["ci_unit"] == "utterance" and result["n_speakers"] == 3


# --- bootstrap intervals -----------------------------------------------------

def test_bootstrap_contains_estimate_and_is_deterministic():
    records = synthetic(8, 10, [0.05, 0.1, 0.15, 0.2, 0.1, 0.3, 0.05, 0.2])
    result = score(records, n_boot=500, seed=3)
    lo, hi = result["wer_ci95"]
    assert lo < result["wer"] < hi
    clo, chi = result["cer_ci95"]
    assert clo < result["cer"] < chi
    again = score(records, n_boot=500, seed=3)
    assert again["wer_ci95"] == result["wer_ci95"]
    other = score(records, n_boot=500, seed=4)
    assert other["wer_ci95"] != result["wer_ci95"]


def test_bootstrap_narrows_with_more_data():
    # Ten speakers, so speaker blocks are used at both sizes.
    errors = [0.05, 0.1, 0.15, 0.2, 0.1, 0.3, 0.05, 0.2, 0.25, 0.1]
    small = utterance_counts(synthetic(10, 10, errors, seed=1))
    large = utterance_counts(synthetic(10, 10, errors, seed=1)
                             + synthetic(10, 10, errors, seed=2, prefix="b")
                             + synthetic(10, 10, errors, seed=3, prefix="c")
                             + synthetic(10, 10, errors, seed=4, prefix="d"))
    for by_speaker in (True, False):
        lo_s, hi_s = bootstrap_ci(small, n_boot=1000, by_speaker=by_speaker)
        lo_l, hi_l = bootstrap_ci(large, n_boot=1000, by_speaker=by_speaker)
        assert hi_l - lo_l < hi_s - lo_s


def test_speaker_blocks_widen_interval_under_speaker_effects():
    # Half the speakers are nearly perfect, half are terrible: utterances are not independent.
    counts = utterance_counts(synthetic(10, 20, [0.0, 0.8] * 5))
    lo_spk, hi_spk = bootstrap_ci(counts, n_boot=1000, by_speaker=True)
    lo_utt, hi_utt = bootstrap_ci(counts, n_boot=1000, by_speaker=False)
    assert hi_spk - lo_spk > 1.5 * (hi_utt - lo_utt)


def test_unknown_speakers_resample_utterances():
    counts = utterance_counts(synthetic(4, 10, [0.1, 0.2, 0.3, 0.4]))
    counts["speaker"] = None
    assert bootstrap_ci(counts, by_speaker=True) == bootstrap_ci(counts, by_speaker=False)


@pytest.mark.parametrize("n_speakers, unit", [(1, "utterance"), (3, "utterance"), (12, "speaker")])
def test_interval_resamples_speakers_only_when_there_are_enough(n_speakers, unit):
    # One speaker's 120 utterances used to give an interval whose two ends equalled the WER.
    per_speaker = 120 // n_speakers
    records = synthetic(n_speakers, per_speaker, [0.1 + 0.3 * (s % 2) for s in range(n_speakers)], seed=5)
    result = score(records, n_boot=500)
    assert result["ci_unit"] == unit and result["n_speakers"] == n_speakers
    lo, hi = result["wer_ci95"]
    assert lo < result["wer"] < hi and hi - lo > 1.0
    assert bootstrap_ci(utterance_counts(records), n_boot=500) == result["wer_ci95"]
    other = synthetic(n_speakers, per_speaker, [0.3] * n_speakers, seed=6)
    paired = paired_difference(records, other, n_boot=500)
    assert paired["ci_unit"] == unit and paired["ci95"][0] < paired["ci95"][1]


def test_fewer_speakers_than_the_floor_resample_utterances_as_if_unknown():
    counts = utterance_counts(synthetic(MIN_SPEAKER_BLOCKS - 1, 10, [0.1, 0.5] * 5))
    unknown = counts.assign(speaker=None)
    assert bootstrap_ci(counts) == bootstrap_ci(unknown)
    enough = utterance_counts(synthetic(MIN_SPEAKER_BLOCKS, 10, [0.1, 0.5] * 5))
    assert bootstrap_ci(enough) != bootstrap_ci(enough.assign(speaker=None))


def test_one_utterance_gives_no_interval_rather_than_a_zero_width_one():
    result = score([rec("a", "a b c d", "a x c d", speaker="s")], n_boot=100)
    assert result["wer"] == 25.0
    assert all(math.isnan(end) for end in result["wer_ci95"] + result["cer_ci95"])
    paired = paired_difference([rec("a", "a b c d", "a x c d")], [rec("a", "a b c d", "a b c d")], n_boot=100)
    assert paired["diff"] == -25.0 and all(math.isnan(end) for end in paired["ci95"])
    assert math.isnan(paired["p_value"])


def test_bootstrap_level_controls_width():
    counts = utterance_counts(synthetic(6, 10, [0.1, 0.2, 0.3, 0.1, 0.2, 0.3]))
    lo95, hi95 = bootstrap_ci(counts, level=0.95)
    lo50, hi50 = bootstrap_ci(counts, level=0.50)
    assert lo95 <= lo50 <= hi50 <= hi95


# --- paired differences ------------------------------------------------------

def test_paired_difference_with_itself_is_exactly_zero():
    records = synthetic(6, 10, [0.1, 0.3, 0.2, 0.4, 0.1, 0.2])
    result = paired_difference(records, records, n_boot=300)
    assert result["diff"] == 0.0
    assert result["ci95"] == [0.0, 0.0]
    assert result["p_value"] == 1.0
    assert result["n"] == 60


def test_clearly_better_system_has_negative_diff_excluding_zero():
    errors = [0.2, 0.3, 0.25, 0.4, 0.2, 0.3, 0.35, 0.25]
    worse = synthetic(8, 15, errors, seed=0)
    better = synthetic(8, 15, [e / 4 for e in errors], seed=1)
    result = paired_difference(worse, better, n_boot=1000, seed=0)
    assert result["diff"] < 0
    lo, hi = result["ci95"]
    assert lo <= result["diff"] <= hi < 0
    assert result["p_value"] < 0.01
    assert result["diff"] == pytest.approx(result["wer_b"] - result["wer_a"])


def test_paired_difference_matches_by_id_and_uses_intersection():
    a = [rec("u1", "a b c", "a b c"), rec("u2", "a b c", "a x c"), rec("only_a", "a", "b")]
    b = [rec("u2", "a b c", "a b c"), rec("u1", "a b c", "a b c"),
         rec("only_b", "a", "a"), rec("fail", "a", "a", error="unreadable")]
    result = paired_difference(a, b, n_boot=100)
    assert result["n"] == 2 and result["n_only_a"] == 1 and result["n_only_b"] == 1
    assert result["wer_a"] == pytest.approx(100 / 6)
    assert result["wer_b"] == 0.0
    assert result["diff"] == pytest.approx(-100 / 6)


def test_paired_difference_without_shared_ids_raises():
    with pytest.raises(ValueError, match="no shared"):
        paired_difference([rec("a", "x", "x")], [rec("b", "x", "x")])


def test_paired_bootstrap_is_deterministic():
    a = synthetic(5, 8, [0.1, 0.2, 0.3, 0.2, 0.1], seed=0)
    b = synthetic(5, 8, [0.2, 0.2, 0.2, 0.2, 0.2], seed=1)
    assert paired_difference(a, b, seed=7) == paired_difference(a, b, seed=7)
