"""Read and write per-utterance result files without ever leaving half a file.

Whole-file writers go through a temporary file in the target's directory and
`os.replace`, which is atomic on one filesystem: a reader sees the old file or
the new one, never a mix. `append_jsonl` is for incremental progress while
decoding; a crash there can only truncate the last line, which `read_jsonl`
can be told to drop.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO

import pandas as pd


@contextlib.contextmanager
def _atomic_open(path: str | os.PathLike, binary: bool = False) -> Iterator[IO]:
    """A text (or `binary`) handle whose content replaces `path` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A dot-prefixed name keeps half-written files out of globs like "*.jsonl".
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; results are meant to be shared.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_line(record: Mapping) -> str:
    """One record as a single JSON line."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[Mapping]) -> Path:
    """Write records as JSON lines, replacing `path` atomically; returns the path."""
    with _atomic_open(path) as handle:
        for record in records:
            handle.write(_json_line(record))
    return Path(path)


def append_jsonl(path: str | os.PathLike, record: Mapping) -> None:
    """Append one record as a JSON line and fsync, so finished work survives a crash.

    A last line that a crash cut short (no newline) is dropped first: appended to, it would
    become a corrupt line in the middle, which `read_jsonl` refuses on every later resume.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        if end:
            handle.seek(end - 1)
            if handle.read(1) != b"\n":
                handle.seek(0)
                handle.truncate(handle.read().rfind(b"\n") + 1)
        handle.write(_json_line(record).encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | os.PathLike, drop_truncated_last_line: bool = False) -> list[dict]:
    """Read JSON lines into dicts; a corrupt line raises ValueError naming the path and line."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as handle:
        lines = handle.read().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            # Only the final line can be cut short by a crash during append_jsonl.
            if drop_truncated_last_line and number == len(lines):
                break
            raise ValueError(f"{path}:{number}: corrupt JSON line ({exc.msg}): {line[:80]!r}") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text, replacing `path` atomically."""
    with _atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes, replacing `path` atomically."""
    with _atomic_open(path, binary=True) as handle:
        handle.write(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: object) -> Path:
    """Write one JSON document (indented, trailing newline), replacing `path` atomically."""
    return write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def write_csv_atomic(path: str | os.PathLike, dataframe: pd.DataFrame, index: bool = False) -> Path:
    """Write a DataFrame as CSV, replacing `path` atomically."""
    with _atomic_open(path) as handle:
        dataframe.to_csv(handle, index=index)
    return Path(path)


def cache_key(**parts: object) -> str:
    """A short stable name for a result: the first 16 hex digits of sha256 of canonical JSON."""
    # Sorted keys and fixed separators make the text, and so the hash, independent of call order.
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
