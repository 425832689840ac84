"""Result files: atomic writes, JSONL round trips, corrupt-line errors, cache keys."""
from __future__ import annotations

import hashlib
import json
import os

import pandas as pd
import pytest

from prunelib.results import (
    append_jsonl,
    cache_key,
    read_jsonl,
    write_csv_atomic,
    write_json_atomic,
    write_jsonl_atomic,
)

RECORDS = [
    {"id": "u1", "reference": "héllo wörld", "hypothesis": "hello world", "speaker": "s1",
     "seconds": 1.5, "decode_seconds": 0.1},
    {"id": "u2", "reference": "x", "hypothesis": "", "speaker": None, "seconds": 0.5,
     "decode_seconds": 0.05, "long_form": False},
]


def test_jsonl_round_trip_creates_parent_dirs(tmp_path):
    path = tmp_path / "a" / "b" / "results.jsonl"
    write_jsonl_atomic(path, RECORDS)
    assert read_jsonl(path) == RECORDS
    assert os.listdir(path.parent) == ["results.jsonl"]


def test_atomic_write_keeps_old_file_when_writer_raises(tmp_path):
    path = tmp_path / "results.jsonl"
    write_jsonl_atomic(path, RECORDS)
    before = path.read_bytes()

    def exploding():
        yield {"id": "new1"}
        yield {"id": "new2"}
        raise RuntimeError("decoder crashed")

    with pytest.raises(RuntimeError, match="decoder crashed"):
        write_jsonl_atomic(path, exploding())
    assert path.read_bytes() == before
    # No temporary file is left behind either.
    assert os.listdir(tmp_path) == ["results.jsonl"]


def test_atomic_write_of_new_file_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "fresh.jsonl"

    def exploding():
        yield {"id": "a"}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl_atomic(path, exploding())
    assert os.listdir(tmp_path) == []


def test_unserialisable_record_leaves_old_file(tmp_path):
    path = tmp_path / "results.jsonl"
    write_jsonl_atomic(path, RECORDS)
    with pytest.raises(TypeError):
        write_jsonl_atomic(path, [{"id": "x", "bad": object()}])
    assert read_jsonl(path) == RECORDS


def test_corrupt_line_error_names_path_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "u1"}\n\n{"id": "u2", oops}\n{"id": "u3"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"results\.jsonl:3: corrupt JSON line"):
        read_jsonl(path)


def test_non_object_line_is_an_error(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "u1"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r":2: expected a JSON object"):
        read_jsonl(path)


def test_append_then_read_and_truncated_tail(tmp_path):
    path = tmp_path / "progress" / "partial.jsonl"
    for record in RECORDS:
        append_jsonl(path, record)
    assert read_jsonl(path) == RECORDS
    # A crash mid-append leaves an unterminated last line.
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"id": "u3", "refer')
    with pytest.raises(ValueError, match=r"partial\.jsonl:3:"):
        read_jsonl(path)
    assert read_jsonl(path, drop_truncated_last_line=True) == RECORDS


def test_appending_after_a_cut_line_drops_that_line(tmp_path):
    # A resumed run appends after the crash's cut line; a second crash must still leave a readable file.
    path = tmp_path / "partial.jsonl"
    append_jsonl(path, RECORDS[0])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"id": "cut", "refer')
    append_jsonl(path, RECORDS[1])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"id": "cut again')
    assert read_jsonl(path, drop_truncated_last_line=True) == RECORDS[:2]
    assert "cut" not in path.read_text(encoding="utf-8").splitlines()[1]


def test_drop_truncated_tail_still_rejects_corruption_in_the_middle(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "u1"}\n{broken\n{"id": "u3"}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"r\.jsonl:2:"):
        read_jsonl(path, drop_truncated_last_line=True)


def test_json_and_csv_atomic(tmp_path):
    summary = {"wer": 12.5, "wer_ci95": [10.0, 15.0], "model": "whisper-tiny"}
    json_path = write_json_atomic(tmp_path / "out" / "summary.json", summary)
    assert json.loads(json_path.read_text(encoding="utf-8")) == summary

    frame = pd.DataFrame({"model": ["a", "b"], "wer": [1.5, 2.25]})
    csv_path = write_csv_atomic(tmp_path / "out" / "table.csv", frame)
    pd.testing.assert_frame_equal(pd.read_csv(csv_path), frame)
    assert sorted(os.listdir(tmp_path / "out")) == ["summary.json", "table.csv"]


def test_cache_key_is_short_stable_and_order_independent():
    key = cache_key(model="openai/whisper-tiny", corpus="librispeech-clean", decoding={"beam": 1},
                    prune={"sparsity": 0.5, "method": "magnitude"})
    same = cache_key(prune={"method": "magnitude", "sparsity": 0.5}, decoding={"beam": 1},
                     corpus="librispeech-clean", model="openai/whisper-tiny")
    assert key == same
    assert len(key) == 16 and int(key, 16) >= 0
    assert cache_key(model="openai/whisper-tiny", corpus="librispeech-clean", decoding={"beam": 1},
                     prune={"sparsity": 0.6, "method": "magnitude"}) != key
    # Pinned value: changing the canonical form would silently orphan every cached result.
    assert cache_key(model="m", sparsity=0.5) == cache_key(sparsity=0.5, model="m")
    expected = hashlib.sha256(b'{"model":"m","sparsity":0.5}').hexdigest()[:16]
    assert cache_key(model="m", sparsity=0.5) == expected
