"""Evaluate a (possibly pruned) model on a corpus, with a resumable per-utterance cache."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import prunelib
from prunelib import distributed, results, scoring
from prunelib.components import find_stacks
from prunelib.corpora import Corpus
from prunelib.models import LoadedModel
from prunelib.pruning import parse_prune_spec, pruned, resolve
from prunelib.transcribe import Decoding, transcribe

log = logging.getLogger(__name__)

RESULTS_ENV = "PRUNELIB_RESULTS"


def project_root() -> Path:
    """The repository root when prunelib runs from a checkout, else the working directory."""
    checkout = Path(prunelib.__file__).resolve().parents[1]
    return checkout if (checkout / "pyproject.toml").exists() else Path.cwd()


def results_root() -> Path:
    """Where results go: $PRUNELIB_RESULTS, else <repo>/results."""
    return Path(os.environ.get(RESULTS_ENV, project_root() / "results"))


@dataclass
class Evaluation:
    """Per-utterance records, their score, and how they were obtained."""

    records: list[dict]
    summary: dict
    path: Path  # the per-utterance JSONL file
    from_cache: bool = False
    report: object | None = field(default=None, repr=False)  # the SparsityReport of the prune (None when read from cache)


def touches_encoder(loaded: LoadedModel, spec) -> bool:
    """Whether the prune spec changes any encoder weight."""
    prefix = find_stacks(loaded.model)["encoder"]
    return any(name.startswith(prefix) for _, names in resolve(spec, loaded.model) for name in names)


def encoder_key(loaded: LoadedModel, spec, importance_name: str) -> str:
    """What the encoder's weights under `spec` depend on, as an encoder-cache key.

    A prune that leaves the encoder dense shares the dense encoder's outputs; one that prunes
    it shares them only with the same spec and importance (another decoding pipeline, say).
    """
    if not touches_encoder(loaded, spec):
        return loaded.fingerprint
    return results.cache_key(weights=loaded.fingerprint, prune=str(spec), importance=importance_name)


def evaluation_key(loaded: LoadedModel, corpus: Corpus, decoding: Decoding, prune: str, importance: str) -> str:
    """The cache key: everything that changes the transcripts, and nothing else."""
    decoding_key = decoding.key()
    if not loaded.is_multilingual:
        # English-only checkpoints have no language tokens: every pipeline decodes the same.
        decoding_key["language"] = "english-only"
    return results.cache_key(
        model=loaded.name,
        weights=loaded.fingerprint,
        corpus=corpus.name,
        utterances=results.cache_key(ids=[u.id for u in corpus.utterances]),
        decoding=decoding_key,
        prune=prune,
        importance=importance,
    )


def _decode_or_read(loaded: LoadedModel, corpus: Corpus, decoding: Decoding, final: Path, partial: Path,
                    encoder_cache_key: str | None, progress: bool) -> tuple[list[dict], bool]:
    """Records from the final cache file, else decoded (resuming from the partial file)."""
    if final.exists():
        log.info("read cached results from %s", final)
        return results.read_jsonl(final), True
    done = {}
    if partial.exists():
        # A crash mid-append leaves a cut last line: drop it, and rewrite the file so
        # that new appends do not glue onto the fragment.
        kept = results.read_jsonl(partial, drop_truncated_last_line=True)
        results.write_jsonl_atomic(partial, kept)
        done = {r["id"]: r for r in kept}
    if done:
        log.info("resuming: %d of %d utterances already in %s", len(done), len(corpus), partial)
    # Sharded runs decode only this rank's share; a single process's shard is everything.
    todo = [u for u in distributed.shard(corpus.utterances) if u.id not in done]

    def save(batch_records: list[dict]) -> None:
        for record in batch_records:
            results.append_jsonl(partial, record)

    encoder_cache = loaded.encoder_cache if encoder_cache_key is not None else None
    new = transcribe(loaded, todo, decoding, progress=progress, on_batch=save, encoder_cache=encoder_cache,
                     encoder_key=encoder_cache_key) if todo else []
    # Merge every rank's records (no-op alone); rank 0 writes the file one process would have.
    by_id = distributed.gather_records({**done, **{r["id"]: r for r in new}})
    records = [by_id[u.id] for u in corpus.utterances]
    distributed.write_jsonl_once(final, records)
    partial.unlink(missing_ok=True)
    return records, False


def evaluate(
    loaded: LoadedModel,
    corpus: Corpus,
    decoding: Decoding = Decoding(),
    prune: str = "",
    importance: dict | None = None,
    importance_name: str = "magnitude",
    cache_dir: Path | None = None,
    progress: bool = True,
    n_boot: int = 1000,
    reuse_encoder: bool = True,
) -> Evaluation:
    """Transcribe and score `corpus` with `prune` applied temporarily (weights restored after).

    Per-utterance records are cached under `cache_dir` (default <results>/cache) by model,
    weights, corpus, decoding and prune spec: a repeat call reads them instead of decoding,
    and an interrupted run resumes where it stopped. With `reuse_encoder`, encoder outputs kept
    in memory from earlier calls are reused when the encoder's weights are the same: every
    prune that leaves the encoder dense, and the same prune under another decoding pipeline.
    """
    spec = parse_prune_spec(prune)
    if importance is not None and importance_name == "magnitude":
        raise ValueError("name the importance scores (importance_name) so cached results stay distinct")
    key = evaluation_key(loaded, corpus, decoding, str(spec), importance_name if importance is not None else "magnitude")
    cache_dir = Path(cache_dir) if cache_dir is not None else results_root() / "cache"
    final = cache_dir / f"{key}.jsonl"
    # Under torchrun / accelerate each rank appends to its own partial file (same name when alone).
    partial = cache_dir / f"{key}.partial{distributed.partial_suffix()}.jsonl"

    sparsity_file = cache_dir / f"{key}.sparsity.json"
    if final.exists() and sparsity_file.exists():
        # Cached transcripts and sparsities: no need to compute the masks again.
        records, from_cache, report = results.read_jsonl(final), True, None
        sparsity = json.loads(sparsity_file.read_text())
        log.info("read %d cached results from %s", len(records), final)
    else:
        with pruned(loaded.model, spec, importance=importance) as report:
            shared = encoder_key(loaded, spec, importance_name if importance is not None else "magnitude") \
                if reuse_encoder else None
            records, from_cache = _decode_or_read(loaded, corpus, decoding, final, partial, shared, progress)
        sparsity = {"sparsity": round(100 * report.overall_weights, 3),
                    "sparsity_linear": round(100 * report.overall_linear, 3)}
        results.write_json_atomic(sparsity_file, sparsity)

    summary = {
        "model": loaded.name,
        "dataset": corpus.name,
        "language": decoding.language,
        "prune": str(spec),
        "importance": importance_name if importance is not None else "magnitude",
        **scoring.score(records, n_boot=n_boot),
        **sparsity,
        "n_long_form": sum(bool(r.get("long_form")) for r in records),
        "n_truncated": sum(bool(r.get("truncated")) for r in records),
        "n_hit_token_budget": sum(bool(r.get("hit_token_budget")) for r in records),
        "n_empty_reference": corpus.n_empty_reference,
        "from_cache": from_cache,
    }
    return Evaluation(records=records, summary=summary, path=final, from_cache=from_cache, report=report)
