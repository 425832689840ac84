"""The study's evaluation grid, timed the paper's way and prunelib's way on a sample of it, and extrapolated.

One job: list the evaluations of notebooks 03 and 04 (component ablations under both decoding
pipelines, the damage curves, the allocations) in their order, with what prunelib's way
reuses of the encoder for each (a model of its cache); time a sample of them
  - the paper's way: deep-copy the model, prune the copy, evaluate everything again (encoder
    included) with Whisper's 448-token limit and no cache;
  - prunelib's way: in-place masks, encoder outputs and dense encoder prefixes reused, the
    per-utterance token budget, the results cache;
and extrapolate both to the whole grid at the measured cost per utterance of each reuse.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from prunelib import allocation, scoring
from prunelib.calibration import split_calibration
from prunelib.corpora import Corpus
from prunelib.encoder_cache import EncoderCache, EncoderReuse
from prunelib.evaluate import encoder_reuse, evaluate, evaluation_key
from prunelib.models import LoadedModel
from prunelib.notebooks import load_profile
from prunelib.pruning import parse_prune_spec, prune_permanently
from prunelib.sweep import ablation_specs, paper_component_groups
from prunelib.transcribe import Decoding, transcribe

N_BOOT = 200  # bootstrap resamples per score, the same both ways
# What prunelib's way reuses of the encoder for one configuration (the paper's way reuses nothing).
REUSE = {
    "outputs": "encoder outputs reused (encoder untouched, or the same prune decoded before)",
    "prefix": "dense states entering the first pruned encoder layer reused; only the later layers run",
    "none": "the whole encoder runs (pruned from layer 0 or its front-end, or nothing cached yet)",
    "results": "every record read from the results cache (the same evaluation made before)",
}
# A sample of the default grid, by notebook-03 group label or notebook-04 allocator, with a sparsity: each
# kind of reuse occurs, in the study's order (a group's first level stores the prefix its others reuse).
SAMPLE = (
    ("03", "decoder self-attn", 0.5),
    ("03", "decoder FFN", 0.7),
    ("03", "encoder last 4 layers", 0.5),
    ("03", "encoder late layers", 0.3),
    ("03", "encoder late layers", 0.5),
    ("03", "encoder self-attn", 0.5),
    ("04", "global", 0.4),
    ("04", "global+embed", 0.4),  # the paper's baseline, collapsed: the paper's way decodes it to 448 tokens
    ("04", "uniform", 0.3),
)
QUICK_SAMPLE = (("03", "decoder self-attn", 0.5), ("03", "encoder late layers", 0.3),
                ("03", "encoder late layers", 0.5), ("04", "global", 0.4))
SECOND_PIPELINE = ("decoder self-attn 50%", "encoder late layers 50%")  # sample entries also decoded under 'auto'


@dataclasses.dataclass(frozen=True)
class Config:
    """One evaluation of the grid: where it comes from, its prune spec, its utterances and pipeline."""

    notebook: str
    label: str
    spec: str  # prune-spec text; for a notebook-04 allocation of the grid only its name and target
    utterances: str  # which: "sample", "held-out" or "calibration" (see study_grid); "timed" in the benchmark
    language: str = "en"
    reuse: str = ""  # a key of REUSE: what prunelib's way reuses, in study order


class CacheModel:
    """Which encoder states prunelib's in-memory cache would hold, one block per (key, utterance set), LRU.

    A model of `EncoderCache` for counting the grid without running it: every block is put and
    read whole, so blocks stand for their utterances. Each notebook is its own process: a cold cache.
    """

    def __init__(self, block_bytes: dict[str, int], max_bytes: int, n_layers: int) -> None:
        self.block_bytes, self.max_bytes, self.n_layers = block_bytes, max_bytes, n_layers
        self.blocks: dict[tuple[str, str], int] = {}

    def _touch(self, block: tuple[str, str]) -> bool:
        if block in self.blocks:
            self.blocks[block] = self.blocks.pop(block)
            return True
        return False

    def _put(self, block: tuple[str, str]) -> None:
        size = self.block_bytes[block[1]]
        while self.blocks and sum(self.blocks.values()) + size > self.max_bytes:
            self.blocks.pop(next(iter(self.blocks)))
        if size <= self.max_bytes:
            self.blocks[block] = size

    def evaluate(self, reuse: EncoderReuse, utterances: str) -> str:
        """What one evaluation reuses, updating the model as `transcribe.encoder_outputs` updates the cache."""
        if self._touch((reuse.key, utterances)):
            return "outputs"
        found = "none"
        if reuse.prefix_layers and reuse.prefix_layers < self.n_layers:
            if self._touch((reuse.prefix_key, utterances)):
                found = "prefix"
            else:
                self._put((reuse.prefix_key, utterances))
        self._put((reuse.key, utterances))
        return found


def study_grid(loaded: LoadedModel, corpus: Corpus, profile: str = "default") -> tuple[list[Config], dict[str, int]]:
    """Every evaluation notebooks 03 and 04 make under `profile` for this model, in their order, with its reuse.

    Also the number of utterances of each set evaluated on: "sample" (`corpus`, the profile's
    whole sample: notebook 03), and notebook 02's split of it into "held-out" (04's allocations)
    and "calibration" (04's damage curves).
    """
    settings = load_profile(profile)["notebooks"]
    ablations, allocations = settings["03_component_ablations"], settings["04_global_vs_sensitivity_aware"]
    pool, held_out = split_calibration(corpus, settings["02_sensitivity"]["calibration_speakers"], 0)
    config = loaded.model.config
    state_bytes = config.max_source_positions * config.d_model * next(loaded.model.parameters()).element_size()
    sizes = {"sample": len(corpus), "held-out": len(held_out), "calibration": len(pool)}
    block_bytes = {name: count * state_bytes for name, count in sizes.items()}
    grid: list[Config] = []
    done: set[tuple[str, str, str]] = set()  # (spec, language, utterances): the results cache

    def add(cache: CacheModel, notebook: str, label: str, spec: str, utterances: str, language: str = "en") -> None:
        # English-only checkpoints decode every pipeline alike, and the results cache knows it.
        decoded = (spec, language if loaded.is_multilingual else "english-only", utterances)
        if decoded in done:
            reuse = "results"
        else:
            reuse = cache.evaluate(encoder_reuse(loaded, spec, "magnitude"), utterances)
            done.add(decoded)
        grid.append(Config(notebook, label, spec, utterances, language, reuse))

    def fresh_cache() -> CacheModel:
        return CacheModel(block_bytes, EncoderCache().max_bytes, config.encoder_layers)

    groups = paper_component_groups(loaded.model)
    cache = fresh_cache()
    for index, language in enumerate(ablations["languages"]):
        wanted = groups if index == 0 else {label: groups[label] for label in ablations["headline"] if label in groups}
        levels = ablations["sparsities"] if index == 0 else ablations["headline_sparsities"] or ablations["sparsities"]
        add(cache, "03", "dense", "", "sample", language)
        for label, spec, _ in ablation_specs(wanted, levels):
            add(cache, "03", label, spec, "sample", language)
    cache = fresh_cache()
    add(cache, "04 curves", "dense", "", "calibration")
    for label, selector in allocation.empirical_groups(loaded.model).items():
        for sparsity in allocations["curve_sparsities"]:
            add(cache, "04 curves", label, str(parse_prune_spec(f"{selector}:local={float(sparsity)}")), "calibration")
    add(cache, "04", "dense", "", "held-out")
    # Every allocator prunes linear weights throughout the model, the encoder's first layer included.
    everything = str(parse_prune_spec("global=0.5"))
    for target in allocations["targets"]:
        for name in allocations["allocators"]:
            for seed in (allocations["seeds"] if name == "random" else [0]):
                if name != "paper":
                    grid.append(Config("04", name, f"{name}@{target} seed {seed}", "held-out", "en",
                                       cache.evaluate(encoder_reuse(loaded, everything,
                                                                    f"{name}@{target} seed {seed}"), "held-out")))
    if "paper" in allocations["allocators"]:
        grid.append(Config("04", "paper", "paper", "held-out", "en",
                           cache.evaluate(encoder_reuse(loaded, everything, "paper"), "held-out")))
    return grid, sizes


def sample_configs(loaded: LoadedModel, quick: bool) -> list[Config]:
    """The configurations timed both ways: dense, then SAMPLE (QUICK_SAMPLE), then some under the other pipeline."""
    groups = paper_component_groups(loaded.model)
    configs = [Config("03", "dense", "", "timed")]
    for notebook, label, sparsity in (QUICK_SAMPLE if quick else SAMPLE):
        if notebook == "03":
            spec = str(parse_prune_spec(f"{groups[label]}={sparsity}"))
        else:
            spec = allocation.allocate(label, loaded.model, sparsity).spec
        configs.append(Config(notebook, f"{label} {sparsity:.0%}", spec, "timed"))
    configs += [dataclasses.replace(c, language="auto") for c in list(configs) if c.label in SECOND_PIPELINE]
    return configs


def observed_reuse(loaded: LoadedModel, config: Config, corpus: Corpus, batch_size: int, cache_dir: Path) -> str:
    """What prunelib's way will reuse for `config` now, read from the caches without touching them."""
    decoding = Decoding(language=config.language, batch_size=batch_size)
    key = evaluation_key(loaded, corpus, decoding, str(parse_prune_spec(config.spec)), "magnitude")
    if (cache_dir / f"{key}.jsonl").exists():
        return "results"
    ids = [utt.id for utt in corpus.utterances]
    reuse = encoder_reuse(loaded, config.spec, "magnitude")
    cache = loaded.encoder_cache
    if all(cache.holds(reuse.key, utt_id) for utt_id in ids):
        return "outputs"
    n_layers = loaded.model.config.encoder_layers
    if 0 < reuse.prefix_layers < n_layers and all(cache.holds(reuse.prefix_key, utt_id) for utt_id in ids):
        return "prefix"
    return "none"


def paper_way(loaded: LoadedModel, corpus: Corpus, config: Config, batch_size: int) -> tuple[list[dict], float]:
    """Deep copy, prune the copy for good, transcribe everything (448 tokens, 30 s, no cache); records and seconds."""
    started = time.perf_counter()
    model_copy = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    if config.spec:
        prune_permanently(model_copy.model, config.spec)
    decoding = Decoding(language=config.language, batch_size=batch_size, long_form=False, max_tokens_per_second=None)
    records = transcribe(model_copy, corpus.utterances, decoding, progress=False)
    scoring.score(records, n_boot=N_BOOT)
    del model_copy
    return records, time.perf_counter() - started


def prunelib_way(loaded: LoadedModel, corpus: Corpus, config: Config, batch_size: int,
                 cache_dir: Path) -> tuple[list[dict], float]:
    """`evaluate` with in-place masks, encoder reuse, the token budget and the results cache; records and seconds."""
    started = time.perf_counter()
    evaluation = evaluate(loaded, corpus, Decoding(language=config.language, batch_size=batch_size),
                          prune=config.spec, cache_dir=cache_dir, progress=False, n_boot=N_BOOT)
    return evaluation.records, time.perf_counter() - started


def compare(rows: Sequence[dict]) -> None:
    """Add each timed row's WER both ways, differing transcripts, and prunelib's token-budget stops."""
    for row in rows:
        row["wer_paper"] = scoring.score(row["paper_records"], n_boot=N_BOOT)["wer"]
        row["wer_ours"] = scoring.score(row["ours_records"], n_boot=N_BOOT)["wer"]
        row["budget_hits"] = sum(bool(r.get("hit_token_budget")) for r in row["ours_records"])
        row["differ"] = sum(a["hypothesis"] != b["hypothesis"]
                            for a, b in zip(row["paper_records"], row["ours_records"], strict=True))


def extrapolate(grid: Sequence[Config], rows: Sequence[dict], sizes: dict[str, int], n_sample: int) -> dict:
    """Study seconds both ways: each grid evaluation at the mean measured cost per utterance of its reuse.

    `sizes` gives the utterances of each set (study_grid). Evaluations read from the
    results cache cost nothing prunelib's way and a full evaluation the paper's (which has no
    cache), priced at the mean of every sampled configuration. Reuses with no sampled
    configuration are counted and left out of both totals.
    """
    per_reuse: dict[str, dict] = {}
    all_paper = sum(row["paper_seconds"] for row in rows) / len(rows) / n_sample
    for reuse in REUSE:
        measured = [row for row in rows if row["reuse"] == reuse]
        evaluations = [config for config in grid if config.reuse == reuse]
        utterances = sum(sizes[config.utterances] for config in evaluations)
        if reuse == "results":
            paper, ours = all_paper, 0.0
        elif measured:
            paper = sum(row["paper_seconds"] for row in measured) / len(measured) / n_sample
            ours = sum(row["ours_seconds"] for row in measured) / len(measured) / n_sample
        else:
            paper = ours = None
        per_reuse[reuse] = {"configs": len(evaluations), "utterances": utterances, "paper": paper, "ours": ours,
                            "sampled": len(measured)}
    counted = [k for k, v in per_reuse.items() if v["paper"] is not None]
    return {"per_reuse": per_reuse,
            "paper_seconds": sum(per_reuse[k]["paper"] * per_reuse[k]["utterances"] for k in counted),
            "ours_seconds": sum(per_reuse[k]["ours"] * per_reuse[k]["utterances"] for k in counted),
            "left_out": [k for k in per_reuse if k not in counted and per_reuse[k]["configs"]]}
