"""Evaluate a (possibly pruned) model on a corpus, with a resumable per-utterance cache."""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from prunelib import distributed, results, scoring
from prunelib.components import TensorInfo, list_components, num_layers
from prunelib.corpora import Corpus
from prunelib.encoder_cache import EncoderReuse
from prunelib.models import LoadedModel
from prunelib.paths import results_root
from prunelib.pruning import parse_prune_spec, pruned, resolve
from prunelib.transcribe import Decoding, check_language, transcribe

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Per-utterance records, their score, and how they were obtained."""

    records: list[dict]
    summary: dict
    path: Path  # the per-utterance JSONL file: exactly these records
    from_cache: bool = False
    report: object | None = field(
        default=None, repr=False
    )  # the SparsityReport of the prune (None when read from cache)


def _selected_tensors(loaded: LoadedModel, spec) -> list[TensorInfo]:
    """Every tensor `spec` selects, with its stack, layer and kind."""
    infos = {info.name: info for info in list_components(loaded.model)}
    return [infos[name] for _, names in resolve(spec, loaded.model) for name in names]


def dense_encoder_prefix(loaded: LoadedModel, spec) -> int:
    """How many leading encoder layers `spec` leaves dense, with the convolutional front-end.

    All of them when it leaves the encoder alone; 0 when it prunes the front-end, the final
    layer norm or layer 0.
    """
    touched = [info for info in _selected_tensors(loaded, spec) if info.stack == "encoder"]
    if not touched:
        return num_layers(loaded.model)["encoder"]
    if any(info.layer is None for info in touched):
        return 0
    return min(info.layer for info in touched)


def touches_encoder(loaded: LoadedModel, spec) -> bool:
    """Whether the prune spec changes any encoder weight."""
    return dense_encoder_prefix(loaded, spec) < num_layers(loaded.model)["encoder"]


def encoder_key(loaded: LoadedModel, spec, importance_name: str) -> str:
    """What the encoder's weights under `spec` depend on, as an encoder-cache key.

    A prune that leaves the encoder dense shares the dense encoder's outputs; one that prunes
    it shares them only with the same spec and importance (another decoding pipeline, say).
    """
    if not touches_encoder(loaded, spec):
        return loaded.fingerprint
    return results.cache_key(weights=loaded.fingerprint, prune=str(spec), importance=importance_name)


def encoder_reuse(loaded: LoadedModel, spec, importance_name: str) -> EncoderReuse:
    """How an evaluation under `spec` reuses encoder work: whole outputs, or the dense prefix's.

    The prefix states are the dense model's, so every prune that leaves those layers dense
    shares them, whatever it does later in the encoder.
    """
    prefix_layers = dense_encoder_prefix(loaded, spec)
    key = encoder_key(loaded, spec, importance_name)
    # The decoder's cross-attention keys and values follow from the encoder outputs and these weights alone.
    cross_weights = [info for info in _selected_tensors(loaded, spec) if info.kind == "cross_attn"
                     and info.sub in ("k", "v")]
    cross_weights_key = results.cache_key(prune=str(spec), importance=importance_name) if cross_weights else "dense"
    return EncoderReuse(cache=loaded.encoder_cache, key=key, prefix_layers=prefix_layers,
                        prefix_key=f"{loaded.fingerprint}:entering-encoder-layer-{prefix_layers}",
                        cross_cache=loaded.cross_cache, cross_key=f"{key}:cross-attention-kv-{cross_weights_key}")


@functools.lru_cache(maxsize=8)
def _vocabulary_key(tokenizer, size: int) -> str:
    """The vocabulary's hash, once per tokenizer and size: hashing 51,865 entries takes a few tenths of a second.

    `size` is in the arguments so that a tokenizer given new tokens (its only way to change) is hashed again.
    """
    return results.cache_key(vocabulary=tokenizer.get_vocab())


def _decoder_identity(loaded: LoadedModel) -> dict:
    """What besides the weights turns audio into text: generation and feature settings, vocabulary, dtype,
    attention path, device."""
    parameter = next(loaded.model.parameters())
    tokenizer = loaded.processor.tokenizer
    return {
        "generation": results.cache_key(text=loaded.model.generation_config.to_json_string(use_diff=False)),
        "features": results.cache_key(text=loaded.processor.feature_extractor.to_json_string()),
        "vocabulary": _vocabulary_key(tokenizer, len(tokenizer)),
        "dtype": str(parameter.dtype),
        "attention": loaded.model.config._attn_implementation,
        "device": parameter.device.type,
        "transformers": transformers.__version__,
    }


# Bump when prunelib's own decoding (transcribe: token budgets, prompts, long-form handling, the
# attention path) would write other transcripts for the same settings: old records are then not reused.
CACHE_VERSION = 1


def evaluation_key(loaded: LoadedModel, corpus: Corpus, decoding: Decoding, prune: str, importance: str) -> str:
    """The cache file's key: which utterances, and every setting that can change a transcript.

    What the utterances' audio and references hold is not in the key: each cached record carries
    its audio fingerprint and reference and is reused only while both match.
    """
    decoding_key = decoding.key()
    if not loaded.is_multilingual:
        # English-only checkpoints have no language tokens: every pipeline decodes the same.
        decoding_key["language"] = "english-only"
    return results.cache_key(
        version=CACHE_VERSION,
        model=loaded.name,
        weights=loaded.fingerprint,
        decoder=_decoder_identity(loaded),
        corpus=corpus.name,
        # The file holds exactly the scored utterances, so rescoring it gives the same number.
        utterances=results.cache_key(ids=[u.id for u in corpus.utterances]),
        decoding=decoding_key,
        prune=prune,
        importance=importance,
    )


def _stored_records(*paths: Path) -> dict[str, dict]:
    """Cached records by utterance id from JSONL files (later files win); a cut last line is dropped."""
    stored: dict[str, dict] = {}
    for path in paths:
        if path.exists():
            for record in results.read_jsonl(path, drop_truncated_last_line=True):
                if "id" in record:
                    stored[str(record["id"])] = record
    return stored


def _reusable(stored: dict[str, dict], corpus: Corpus, fingerprints: dict[str, str]) -> dict[str, dict]:
    """The stored records still true of the corpus: same audio fingerprint and same reference.

    An utterance whose audio could not be read is tried again (a failed read costs nothing, and
    the failure may have been passing), never served as a cached skip.
    """
    fresh = {}
    for utt in corpus.utterances:
        record = stored.get(utt.id)
        if record is not None and not record.get("error") and record.get("audio_fingerprint") == fingerprints[utt.id] \
                and record.get("reference") == utt.reference:
            # Speakers only group utterances for the interval: take today's labels.
            fresh[utt.id] = {**record, "speaker": utt.speaker}
    return fresh


def _read_sparsity(path: Path) -> dict | None:
    """The cached sparsities of a prune, or None when absent or damaged (then they are measured again)."""
    if not path.exists():
        return None
    try:
        sparsity = json.loads(path.read_text(encoding="utf-8"))
        if not all(isinstance(sparsity.get(key), (int, float)) for key in ("sparsity", "sparsity_linear")):
            raise ValueError("no numeric 'sparsity' and 'sparsity_linear'")
    except (ValueError, AttributeError, OSError) as err:
        log.warning("%s is damaged (%s); measuring the prune's sparsity again", path, err)
        return None
    return {"sparsity": sparsity["sparsity"], "sparsity_linear": sparsity["sparsity_linear"]}


def _decode_missing(loaded: LoadedModel, corpus: Corpus, decoding: Decoding, done: dict[str, dict],
                    fingerprints: dict[str, str], partial: Path, reuse: EncoderReuse | None,
                    progress: bool) -> tuple[list[dict], int]:
    """Records of every corpus utterance: `done` ones as they are, the rest decoded (this rank's share).

    Returns the records in corpus order and how many were decoded over all ranks.
    """
    mine = distributed.shard(corpus.utterances)
    todo = [u for u in mine if u.id not in done]
    if done:
        log.info("reusing %d cached records; decoding %d of %d utterances", len(done), len(todo), len(corpus))

    def save(batch_records: list[dict]) -> None:
        for record in batch_records:
            record["audio_fingerprint"] = fingerprints[record["id"]]
            results.append_jsonl(partial, record)

    new = transcribe(loaded, todo, decoding, progress=progress, on_batch=save, encoder_reuse=reuse) if todo else []
    by_id = {**{u.id: done[u.id] for u in mine if u.id in done}, **{r["id"]: r for r in new}}
    # Merge every rank's records (no-op alone).
    merged = distributed.gather_records(by_id)
    n_decoded = len(distributed.gather_records({r["id"]: True for r in new}))
    return [merged[u.id] for u in corpus.utterances], n_decoded


def evaluate(
    loaded: LoadedModel,
    corpus: Corpus,
    decoding: Decoding = Decoding(),
    prune: str = "",
    importance: dict | None = None,
    importance_name: str = "magnitude",
    weights: Mapping[str, torch.Tensor] | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    n_boot: int = 1000,
    reuse_encoder: bool = True,
) -> Evaluation:
    """Transcribe and score `corpus` with `prune` applied temporarily (weights restored after).

    Per-utterance records are cached under `cache_dir` (default <results>/cache) by model,
    weights, decoder settings, corpus and its utterance ids, decoding and prune spec: a repeat
    call reuses every record whose audio and reference are unchanged and decodes the rest
    (missing or edited ones), and an interrupted run resumes where it stopped. The score covers
    exactly the corpus's utterances; records of others found in the file are ignored and
    counted (and dropped when the file is next rewritten). With `reuse_encoder`, encoder outputs
    kept in memory from earlier calls are reused when the encoder's weights are the same: every
    prune that leaves the encoder dense, and the same prune under another decoding pipeline; a
    prune of later encoder layers reuses the dense states entering its first pruned layer.
    `weights` replaces whole tensors before the masks (SparseGPT); `importance_name` must then
    name them too.
    """
    spec = parse_prune_spec(prune)
    check_language(loaded, decoding.language)  # here too: a cached file would otherwise answer for any language
    if (importance is not None or weights is not None) and importance_name == "magnitude":
        raise ValueError("name the importance scores and weights (importance_name) so cached results stay distinct")
    importance_label = importance_name if importance is not None or weights is not None else "magnitude"
    key = evaluation_key(loaded, corpus, decoding, str(spec), importance_label)
    cache_dir = Path(cache_dir) if cache_dir is not None else results_root() / "cache"
    final = cache_dir / f"{key}.jsonl"
    # Under torchrun / accelerate each rank appends to its own partial file (same name when alone).
    partial = cache_dir / f"{key}.partial{distributed.partial_suffix()}.jsonl"
    sparsity_file = cache_dir / f"{key}.sparsity.json"

    fingerprints = {u.id: u.audio_fingerprint() for u in corpus.utterances}
    stored = _stored_records(final)
    from_final = _reusable(stored, corpus, fingerprints)
    n_ignored = len(set(stored) - set(fingerprints))
    if n_ignored:
        log.info("%s holds %d records of utterances outside this corpus: ignored", final, n_ignored)
    sparsity, report = _read_sparsity(sparsity_file), None
    # Completeness is judged on the final file alone, which every rank reads alike, so ranks agree.
    if len(from_final) == len(corpus):
        records, n_decoded = [from_final[u.id] for u in corpus.utterances], 0
        log.info("read %d cached results from %s", len(records), final)
    else:
        done = {**from_final, **_reusable(_stored_records(partial), corpus, fingerprints)}
        with pruned(loaded.model, spec, importance=importance, weights=weights) as report:
            shared = encoder_reuse(loaded, spec, importance_label) if reuse_encoder else None
            records, n_decoded = _decode_missing(loaded, corpus, decoding, done, fingerprints, partial, shared,
                                                 progress)
        distributed.write_jsonl_once(final, records)
        partial.unlink(missing_ok=True)
    if sparsity is None:
        if report is None:
            with pruned(loaded.model, spec, importance=importance, weights=weights) as report:
                pass
        sparsity = {"sparsity": round(100 * report.overall_weights, 3),
                    "sparsity_linear": round(100 * report.overall_linear, 3)}
        if distributed.is_main():
            results.write_json_atomic(sparsity_file, sparsity)

    from_cache = n_decoded == 0
    summary = {
        "model": loaded.name,
        "dataset": corpus.name,
        "language": decoding.language,
        "prune": str(spec),
        "importance": importance_label,
        **scoring.score(records, n_boot=n_boot),
        **sparsity,
        "n_long_form": sum(bool(r.get("long_form")) for r in records),
        "n_truncated": sum(bool(r.get("truncated")) for r in records),
        "n_hit_token_budget": sum(bool(r.get("hit_token_budget")) for r in records),
        # The scorer's n_empty_reference counts kept references that normalise to nothing; these never got in.
        "n_dropped_empty_reference": corpus.n_empty_reference,
        "n_decoded": n_decoded,
        "n_cache_ignored": n_ignored,
        "from_cache": from_cache,
    }
    return Evaluation(records=records, summary=summary, path=final, from_cache=from_cache, report=report)
