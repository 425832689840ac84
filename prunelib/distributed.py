"""Split an evaluation across processes started by torchrun or `accelerate launch`, and merge the results.

One job: when a launcher has started several copies of the same command, give each copy
(a *rank*) its own share of the utterances and put every rank's per-utterance records back
together, so that the cache file and the score are the ones a single process produces.

How it works (the simplest robust option we found):
- Rank and world size come from the environment variables both launchers set: ``RANK``,
  ``WORLD_SIZE`` and ``LOCAL_RANK``. Without them everything here is a no-op (one process).
- Sharding is by position: rank r takes utterances r, r + W, r + 2W, ... of the corpus's
  sorted order. Every rank loads the same corpus, so the shards are disjoint, cover it all,
  and need no communication; striding also mixes long and short utterances across ranks.
- Each rank appends its progress to its own partial file (``<key>.partial.rank<r>-of-<W>.jsonl``),
  so ranks never write the same file and an interrupted run resumes with the same world size.
- Records are merged with ``torch.distributed.all_gather_object`` over a gloo process group:
  gloo runs on CPU everywhere (GPU machines included), the records are small Python dicts,
  and the launcher tears every rank down when one fails, so nobody polls files or waits
  forever. Rank 0 then writes the one ``<key>.jsonl`` a single process would have written,
  and a barrier keeps the others from looking for it before it exists.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from prunelib import results

# Ranks that finish their shard early wait in the gather for the slowest one; a heavily
# pruned model can take hours on a big corpus, far past torch's 30-minute default.
GATHER_TIMEOUT = timedelta(hours=12)

T = TypeVar("T")
_group: dist.ProcessGroup | None = None  # the gloo group used for merging, made on first use


@dataclass(frozen=True)
class RankInfo:
    """Which process this is among those a launcher started."""

    rank: int = 0  # global rank, 0 .. world_size - 1
    world_size: int = 1  # number of processes evaluating together
    local_rank: int = 0  # rank on this machine: picks the GPU


def rank_info() -> RankInfo:
    """This process's rank, world size and local rank from RANK / WORLD_SIZE / LOCAL_RANK (defaults: alone)."""
    info = RankInfo(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                    local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ValueError(f"inconsistent launcher environment: RANK={info.rank}, WORLD_SIZE={info.world_size}")
    return info


def is_sharded() -> bool:
    """Whether several processes share the work."""
    return rank_info().world_size > 1


def is_main() -> bool:
    """Whether this is rank 0, the process that writes merged files and prints results."""
    return rank_info().rank == 0


def rank_device(requested: str) -> str:
    """The device for this rank: cuda:LOCAL_RANK when `requested` is CUDA and CUDA exists, else CPU.

    A single process keeps `requested` unchanged.
    """
    info = rank_info()
    if info.world_size == 1:
        return requested
    if requested.startswith("cuda") and torch.cuda.is_available():
        return f"cuda:{info.local_rank}"
    return "cpu"


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of `items`: every world_size-th item, starting at its rank."""
    info = rank_info()
    return list(items[info.rank :: info.world_size])


def partial_suffix() -> str:
    """Suffix that gives each rank its own partial results file ('' for a single process)."""
    info = rank_info()
    return f".rank{info.rank}-of-{info.world_size}" if info.world_size > 1 else ""


def _merge_group() -> dist.ProcessGroup:
    """The gloo process group for merging, started from the launcher's MASTER_ADDR/MASTER_PORT on first use."""
    global _group
    if _group is None:
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=GATHER_TIMEOUT)
            _group = dist.group.WORLD
        else:
            # The caller started its own (maybe NCCL) group; objects travel on CPU through a gloo one.
            _group = dist.new_group(backend="gloo", timeout=GATHER_TIMEOUT)
    return _group


def gather_records(by_id: dict[str, dict]) -> dict[str, dict]:
    """Every rank's records keyed by utterance id, on every rank (unchanged for a single process)."""
    if not is_sharded():
        return by_id
    gathered: list[dict[str, dict] | None] = [None] * rank_info().world_size
    dist.all_gather_object(gathered, by_id, group=_merge_group())
    merged: dict[str, dict] = {}
    for part in gathered:
        merged.update(part)
    return merged


def write_jsonl_once(path: Path, records: list[dict]) -> None:
    """Rank 0 writes `path` atomically; the other ranks wait until it has (a plain write when alone)."""
    if is_main():
        results.write_jsonl_atomic(path, records)
    if is_sharded():
        dist.barrier(group=_merge_group())


def shutdown() -> None:
    """Close the merging process group, if this module started one."""
    global _group
    if _group is not None and dist.is_initialized():
        if _group is dist.group.WORLD:
            dist.destroy_process_group()
        else:
            dist.destroy_process_group(_group)
    _group = None
