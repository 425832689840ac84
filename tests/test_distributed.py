"""Sharded evaluation under torchrun: disjoint shards, one merged cache file, the same score as one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunelib import distributed
from prunelib.results import read_jsonl

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture
def launcher(monkeypatch):
    """Set the variables torchrun / accelerate set, as (rank, world_size, local_rank)."""
    def set_rank(rank: int, world_size: int, local_rank: int | None = None) -> None:
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
        monkeypatch.setenv("LOCAL_RANK", str(rank if local_rank is None else local_rank))
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    return set_rank


def test_alone_everything_is_a_no_op(launcher):
    items = list(range(7))
    assert distributed.rank_info() == distributed.RankInfo(0, 1, 0)
    assert distributed.shard(items) == items and distributed.partial_suffix() == ""
    assert distributed.is_main() and not distributed.is_sharded()
    assert distributed.rank_device("cpu") == "cpu" and distributed.rank_device("cuda:1") == "cuda:1"
    records = {"a": {"id": "a"}}
    assert distributed.gather_records(records) is records


def test_shards_are_disjoint_and_cover_the_corpus(launcher):
    items = [f"u{index:02d}" for index in range(11)]
    shards = []
    for rank in range(3):
        launcher(rank, 3)
        shards.append(distributed.shard(items))
        assert distributed.partial_suffix() == f".rank{rank}-of-3"
        assert distributed.is_main() == (rank == 0)
    assert shards[1] == ["u01", "u04", "u07", "u10"]
    assert sorted(sum(shards, [])) == items


def test_rank_device_uses_local_rank_for_cuda_only(launcher, monkeypatch):
    import torch

    launcher(3, 4, local_rank=1)
    assert distributed.rank_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.rank_device("cuda") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.rank_device("cuda") == "cuda:1"


def test_inconsistent_launcher_environment_is_refused(launcher):
    launcher(2, 2)
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        distributed.rank_info()


# A collapsed model whose repetition loops run into the token budget, which used to be the
# longest utterance's in a batch: two processes batch differently from one. Five utterances
# shard unevenly (3 and 2).
COLLAPSED = ["--dataset", "librispeech:test-other", "--limit", "5", "--batch-size", "5", "--prune", "global=0.6"]


def _eval_command(launch: list[str], cache_dir: Path, data_root: Path, setting: list[str]) -> subprocess.Popen:
    """Start `prunelib eval` on real utterances through `launch`, one thread per process."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    args = ["eval", "--model", "openai/whisper-tiny.en", *setting, "--data-root", str(data_root),
            "--cache-dir", str(cache_dir)]
    return subprocess.Popen([*launch, "prunelib", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _finished(process: subprocess.Popen) -> str:
    """The process's stdout, once it has exited with status 0."""
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    return stdout


def _comparable(record: dict) -> dict:
    """A record without its timing, which differs between runs."""
    return {key: value for key, value in record.items() if key != "decode_seconds"}


@pytest.mark.slow
def test_two_processes_match_one(shared_data, tmp_path):
    # Started together: the single process takes one core while the two ranks share the rest.
    one = _eval_command([sys.executable, "-m"], tmp_path / "one", shared_data, COLLAPSED)
    two = _eval_command([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"],
                        tmp_path / "two", shared_data, COLLAPSED)
    one_out, two_out = _finished(one), _finished(two)
    single = json.loads(one_out.strip().splitlines()[-1])
    lines = [line for line in two_out.splitlines() if line.startswith("{")]
    assert len(lines) == 1, two_out  # rank 0 alone prints the result
    sharded = json.loads(lines[0])
    assert single["world_size"] == 1 and sharded["world_size"] == 2
    for key in ("n", "wer", "wer_ci95", "cer", "substitutions", "insertions", "deletions", "sparsity"):
        assert sharded[key] == single[key], key
    # One merged file under the same key as the single process's, and no partial files left behind.
    single_file, sharded_file = Path(single["results_file"]), Path(sharded["results_file"])
    assert single_file.name == sharded_file.name
    sparsity_file = sharded_file.name.replace(".jsonl", ".sparsity.json")
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == sorted([sharded_file.name, sparsity_file])
    single_records, sharded_records = read_jsonl(single_file), read_jsonl(sharded_file)
    assert len(sharded_records) == single["n"]
    assert [_comparable(r) for r in sharded_records] == [_comparable(r) for r in single_records]
