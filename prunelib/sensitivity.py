"""Measure how sensitive each weight tensor and component of Whisper is, from per-sample
gradients of the teacher-forced cross-entropy on a calibration set.

Four scores per weight tensor, each a mean over the tensor's weights (``g_i`` is the gradient
of utterance i's token-averaged loss, ``gbar`` their mean over the calibration set):

* ``gradient`` = mean |gbar|              (the paper's "gradient" score)
* ``fisher``   = mean (mean_i g_i^2)      (the paper's empirical Fisher; per sample, not batch)
* ``taylor``   = mean |w * gbar|           (first-order saliency of removing each weight)
* ``obd``      = mean 0.5 * F * w^2, F = mean_i g_i^2   (diagonal Fisher, Optimal Brain Damage)

Per-sample gradients come from one backward per utterance, or from torch.func.vmap over
chunks of utterances (``chunk_size``); both give the same sums (tested).

Fisher and OBD are sums over samples, so one pass stores them per (sample, tensor) and scores
any subset later; gradient and Taylor need the running mean gradient, so one pass over a
seeded order snapshots them at nested prefix sizes (8 within 32 within 128 ...).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm import tqdm

from prunelib import results
from prunelib.audio import SAMPLE_RATE, AudioError
from prunelib.components import LINEAR_KINDS, THIRDS, component_table, num_layers, third_of
from prunelib.corpora import Corpus
from prunelib.models import LoadedModel

METHODS = ("gradient", "fisher", "taylor", "obd")
LABELS = ("reference", "pseudo")
MAX_SECONDS = 30.0  # the encoder sees 30 s; longer audio would be cut while its label is not


# ---- calibration data -----------------------------------------------------------------


def split_calibration(corpus: Corpus, n_speakers: int, seed: int) -> tuple[Corpus, Corpus]:
    """(calibration, evaluation): `n_speakers` speakers drawn by seed, the rest for evaluation.

    When any speaker is unknown each utterance counts as its own speaker, so the split is
    utterance-disjoint instead (and `n_speakers` utterances are drawn).
    """
    by_speaker = all(u.speaker is not None for u in corpus.utterances)
    units = sorted({u.speaker if by_speaker else u.id for u in corpus.utterances})
    if not 1 <= n_speakers < len(units):
        raise ValueError(f"n_speakers must be in [1, {len(units) - 1}] for {corpus.name} "
                         f"({len(units)} {'speakers' if by_speaker else 'utterances'}), got {n_speakers}")
    chosen = set(np.random.default_rng(seed).choice(units, size=n_speakers, replace=False).tolist())
    calibration = [u.id for u in corpus.utterances if (u.speaker if by_speaker else u.id) in chosen]
    evaluation = [u.id for u in corpus.utterances if u.id not in set(calibration)]
    return corpus.subset(calibration), corpus.subset(evaluation)


def seeded_order(corpus: Corpus, seed: int) -> list[str]:
    """The corpus's utterance ids in a seeded random order (prefixes are nested subsets)."""
    ids = [u.id for u in corpus.utterances]
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


def sentence_case(text: str) -> str:
    """Write a single-case reference the way Whisper writes: first letter capital, "I" capital.

    LibriSpeech references are UPPER CASE, Earnings-22 lower case, both without punctuation.
    We lower-case, capitalise the first letter and the pronoun I (with I'm, I'll, I've, I'd),
    and add no punctuation (we cannot know it; pseudo labels carry the model's own).
    Mixed-case text is taken to be written already and returned unchanged.
    """
    text = " ".join(text.split())
    if text != text.upper() and text != text.lower():
        return text
    text = re.sub(r"\bi\b", "I", text.lower())
    return text[:1].upper() + text[1:]


def label_texts(loaded: LoadedModel, corpus: Corpus, labels: str = "reference",
                batch_size: int = 16, progress: bool = False) -> dict[str, str]:
    """Label text per utterance id: sentence-cased references, or the model's greedy transcripts.

    Pseudo labels come from prunelib's cached `evaluate` (standard pipeline, English forced),
    so a second call reads them from results/cache instead of decoding again.
    """
    if labels == "reference":
        return {u.id: sentence_case(u.reference) for u in corpus.utterances}
    if labels == "pseudo":
        from prunelib.evaluate import evaluate  # evaluate imports pruning; keep this module light
        from prunelib.transcribe import Decoding

        records = evaluate(loaded, corpus, Decoding(language="en", batch_size=batch_size), progress=progress).records
        return {r["id"]: r["hypothesis"] for r in records}
    raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")


def prefix_ids(loaded: LoadedModel) -> list[int]:
    """Decoder prompt: <|startoftranscript|>[<|en|><|transcribe|>]<|notimestamps|>."""
    generation = loaded.model.generation_config
    prefix = [generation.decoder_start_token_id]
    if loaded.is_multilingual:  # English-only checkpoints have no language or task tokens
        prefix += [generation.lang_to_id["<|en|>"], generation.task_to_id["transcribe"]]
    return prefix + [generation.no_timestamps_token_id]


@dataclass(frozen=True)
class Example:
    """One teacher-forced calibration example: features, decoder inputs and shifted labels."""

    id: str
    input_features: torch.Tensor  # (mel bins, frames), one utterance
    decoder_input_ids: torch.Tensor  # prefix + text tokens
    labels: torch.Tensor  # same length: -100 under the prefix, then text tokens and <|endoftext|>


def make_example(utt_id: str, input_features: torch.Tensor, prefix: list[int], text_ids: list[int],
                 eos_id: int) -> Example:
    """Align prompt and targets: position t predicts token t+1; the prompt itself is not scored."""
    decoder_input_ids = torch.tensor(prefix + text_ids)
    # Passing decoder_input_ids explicitly stops transformers from shifting `labels` right
    # itself (which would turn the -100s under the prompt into pad tokens of the input).
    labels = torch.tensor([-100] * (len(prefix) - 1) + text_ids + [eos_id])
    return Example(utt_id, input_features, decoder_input_ids, labels)


def calibration_examples(loaded: LoadedModel, corpus: Corpus, texts: dict[str, str]) -> tuple[list[Example], list[str]]:
    """Tokenised examples of `corpus` in its order, and the ids skipped (over 30 s or unreadable)."""
    tokenizer, prefix = loaded.processor.tokenizer, prefix_ids(loaded)
    examples, skipped = [], []
    for utt in corpus.utterances:
        try:
            audio = utt.load_audio()
        except AudioError:
            skipped.append(utt.id)
            continue
        if len(audio) > MAX_SECONDS * SAMPLE_RATE:
            skipped.append(utt.id)
            continue
        features = loaded.processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        # Whisper writes every text with a leading space (" The cat ..."); tokenise it the same way.
        text_ids = tokenizer.encode(" " + texts[utt.id].strip(), add_special_tokens=False)
        examples.append(make_example(utt.id, features.input_features[0], prefix, text_ids, tokenizer.eos_token_id))
    return examples, skipped


def example_loss(model: nn.Module, example: Example) -> torch.Tensor:
    """Teacher-forced cross-entropy of one example, averaged over its scored tokens."""
    output = model(input_features=example.input_features[None], decoder_input_ids=example.decoder_input_ids[None],
                   labels=example.labels[None], use_cache=False)  # no key/value cache: nothing is generated
    return output.loss


# ---- one pass of per-sample gradients --------------------------------------------------


@dataclass
class Measurement:
    """What one ordered pass over calibration examples leaves: per-sample sums and snapshots."""

    ids: list[str]  # example ids in the order measured
    numel: pd.Series  # weights per tensor, indexed by parameter name
    losses: list[float]  # per-sample teacher-forced loss (nats per token)
    sq_sums: pd.DataFrame  # rows ids, columns tensors: sum over weights of g_i^2
    obd_sums: pd.DataFrame  # rows ids, columns tensors: sum over weights of 0.5 * g_i^2 * w^2
    snapshots: dict[int, pd.DataFrame]  # prefix size -> per-tensor gradient and taylor scores
    mean_grad: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # over all ids
    fisher_diag: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # mean_i g_i^2


def _distinct_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every distinct parameter by its first name (tied tensors once), as list_components names them."""
    # named_parameters() drops the tied proj_out alias; its gradient lands in embed_tokens.weight.
    return dict(model.named_parameters())


def _padded_chunk(examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack a chunk for vmap: decoder inputs padded at the end (causal attention never sees it), labels with -100."""
    length = max(len(example.decoder_input_ids) for example in examples)
    features = torch.stack([example.input_features for example in examples])
    inputs = torch.stack([nn.functional.pad(e.decoder_input_ids, (0, length - len(e.decoder_input_ids)), value=0)
                          for e in examples])
    labels = torch.stack([nn.functional.pad(e.labels, (0, length - len(e.labels)), value=-100) for e in examples])
    return features, inputs, labels


def _vmap_gradients(model: nn.Module, params: dict[str, torch.Tensor], examples: list[Example]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Losses (chunk,) and gradients (chunk, *shape) of a chunk of examples in one vmapped call."""
    from torch.func import functional_call, grad_and_value, vmap

    def loss(weights, features, inputs, labels):
        output = functional_call(model, weights, (), {"input_features": features[None], "decoder_input_ids": inputs[None],
                                                       "use_cache": False})
        # The same token-averaged cross-entropy as example_loss, written without data-dependent indexing.
        log_probs = output.logits[0].log_softmax(-1)
        scored = labels >= 0
        token = log_probs.gather(-1, labels.clamp(min=0)[:, None])[:, 0]
        return -(token * scored).sum() / scored.sum()

    grads, losses = vmap(grad_and_value(loss), in_dims=(None, 0, 0, 0))(params, *_padded_chunk(examples))
    return losses, grads


def per_sample_gradients(model: nn.Module, examples: list[Example], chunk_size: int = 1
                         ) -> Iterator[tuple[float, dict[str, torch.Tensor]]]:
    """Each example's loss and gradient (every distinct parameter), in order.

    `chunk_size` 1 runs one backward per example; larger values vectorise that many examples
    with torch.func.vmap, which holds `chunk_size` full gradients (and activations) at once:
    memory grows linearly with it. Requires the model's parameters to require grad. The loop
    is the default because it was faster on CPU: whisper-tiny.en on 8 utterances, 1 thread,
    vmap ran at 0.54x (chunk 4) and 0.59x (chunk 8) the loop's speed with 4x and 7x its peak
    memory (bench/fisher.py writes bench/FISHER.md); try chunks on a GPU.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    params = _distinct_parameters(model)
    if chunk_size == 1:
        for example in examples:
            model.zero_grad(set_to_none=True)
            loss = example_loss(model, example)
            loss.backward()
            yield loss.item(), {name: p.grad if p.grad is not None else torch.zeros_like(p) for name, p in params.items()}
        return
    detached = {name: p.detach() for name, p in params.items()}
    # SDPA has no vmap batching rule on CPU (it falls back to a slow loop); eager attention is the same maths.
    attention = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        for start in range(0, len(examples), chunk_size):
            losses, grads = _vmap_gradients(model, detached, examples[start:start + chunk_size])
            for index, loss in enumerate(losses.tolist()):
                yield loss, {name: g[index] for name, g in grads.items()}
    finally:
        model.config._attn_implementation = attention


def measure(model: nn.Module, examples: list[Example], sizes: list[int] | None = None,
            keep_per_weight: bool = False, progress: bool = True, chunk_size: int = 1) -> Measurement:
    """One gradient per example, in order; gradient/taylor snapshots at each prefix size in `sizes`.

    Memory: one running gradient sum per tensor (plus one sum of squares when
    `keep_per_weight`), and `chunk_size` per-sample gradients at a time (see
    per_sample_gradients). The model's weights are not changed; it is left in eval mode with
    gradients cleared and each parameter's requires_grad restored.
    """
    if not examples:
        raise ValueError("no calibration examples")
    n = len(examples)
    sizes = sorted({*(sizes or []), n})
    if sizes[0] < 1 or sizes[-1] > n:
        raise ValueError(f"calibration sizes must lie in [1, {n}], got {sizes}")
    params = _distinct_parameters(model)
    requires_grad = {name: p.requires_grad for name, p in params.items()}
    grad_sum = {name: torch.zeros_like(p) for name, p in params.items()}
    sq_sum = {name: torch.zeros_like(p) for name, p in params.items()} if keep_per_weight else None
    sq_rows, obd_rows, losses, snapshots = [], [], [], {}
    model.eval()  # dropout off: the loss must be a deterministic function of the weights
    try:
        for p in params.values():
            p.requires_grad_(True)
        gradients = per_sample_gradients(model, examples, chunk_size)
        for index, (loss, grads) in enumerate(tqdm(gradients, total=n, desc="per-sample gradients", unit="utt",
                                                   disable=not progress)):
            losses.append(loss)
            sq_row, obd_row = {}, {}
            with torch.no_grad():
                for name, p in params.items():
                    g = grads[name]
                    grad_sum[name] += g
                    g2 = g.square()
                    sq_row[name] = torch.sum(g2, dtype=torch.float64).item()
                    obd_row[name] = 0.5 * torch.sum(g2 * p.square(), dtype=torch.float64).item()
                    if sq_sum is not None:
                        sq_sum[name] += g2
                if index + 1 in sizes:
                    snapshots[index + 1] = pd.DataFrame(
                        [{"name": name,
                          "gradient": (grad_sum[name] / (index + 1)).abs().mean(dtype=torch.float64).item(),
                          "taylor": (grad_sum[name] / (index + 1) * p).abs().mean(dtype=torch.float64).item()}
                         for name, p in params.items()]).set_index("name")
            sq_rows.append(sq_row)
            obd_rows.append(obd_row)
    finally:
        model.zero_grad(set_to_none=True)
        for name, p in params.items():
            p.requires_grad_(requires_grad[name])
        model.eval()
    ids = [example.id for example in examples]
    return Measurement(
        ids=ids,
        numel=pd.Series({name: p.numel() for name, p in params.items()}),
        losses=losses,
        sq_sums=pd.DataFrame(sq_rows, index=ids),
        obd_sums=pd.DataFrame(obd_rows, index=ids),
        snapshots=snapshots,
        mean_grad={name: s / n for name, s in grad_sum.items()} if keep_per_weight else None,
        fisher_diag={name: s / n for name, s in sq_sum.items()} if sq_sum is not None else None,
    )


def linear_scores(measurement: Measurement, ids: list[str]) -> pd.DataFrame:
    """Fisher and OBD per tensor for any subset of the measured examples (they add over samples)."""
    numel = measurement.numel
    return pd.DataFrame({"fisher": measurement.sq_sums.loc[ids].mean() / numel,
                         "obd": measurement.obd_sums.loc[ids].mean() / numel}).rename_axis("name")


def tensor_scores(measurement: Measurement, size: int | None = None) -> pd.DataFrame:
    """All four scores per tensor (index: parameter name) from the first `size` examples."""
    size = size or len(measurement.ids)
    if size not in measurement.snapshots:
        raise ValueError(f"no gradient snapshot at size {size}; measured sizes: {sorted(measurement.snapshots)}")
    scores = measurement.snapshots[size].join(linear_scores(measurement, measurement.ids[:size]))
    scores.insert(0, "numel", measurement.numel)
    return scores[["numel", *METHODS]]


def weight_importance(model: nn.Module, measurement: Measurement, method: str = "obd") -> dict[str, torch.Tensor]:
    """Per-weight importance {param_name: scores} for `pruned(..., importance=)`: taylor or obd."""
    if measurement.mean_grad is None or measurement.fisher_diag is None:
        raise ValueError("measure(..., keep_per_weight=True) is needed for per-weight importance")
    params = _distinct_parameters(model)
    with torch.no_grad():
        if method == "taylor":
            return {name: (measurement.mean_grad[name] * p).abs() for name, p in params.items()}
        if method == "obd":
            return {name: 0.5 * measurement.fisher_diag[name] * p.square() for name, p in params.items()}
    raise ValueError(f"per-weight importance is 'taylor' or 'obd', got {method!r}")


# ---- aggregation -------------------------------------------------------------------------


def component_scores(model: nn.Module, scores: pd.DataFrame) -> pd.DataFrame:
    """Per-tensor mean scores -> per component (stack x layer x kind), weighted by numel.

    A component's score is then its mean over all its weights. Components are named as the
    prune-spec selectors (``decoder.layers[3].cross_attn``), in model order.
    """
    table = component_table(model).set_index("name")
    methods = [m for m in METHODS if m in scores.columns]
    joined = table[["component", "stack", "layer", "kind", "prunable"]].join(scores[methods], how="inner")
    joined["numel"] = table["numel"]
    weighted = joined[methods].mul(joined["numel"], axis=0)
    weighted[["component", "numel"]] = joined[["component", "numel"]]
    sums = weighted.groupby("component", sort=False).sum()
    out = joined.groupby("component", sort=False)[["stack", "layer", "kind"]].first()
    out["numel"] = sums["numel"]
    out["prunable"] = joined.groupby("component", sort=False)["prunable"].all()
    for method in methods:
        out[method] = sums[method] / sums["numel"]
    return out.reset_index()


def group_scores(model: nn.Module, components: pd.DataFrame) -> pd.DataFrame:
    """The paper's coarse groups: stack x linear kind, over all layers and per third of the layers."""
    layers = num_layers(model)
    linear = components[components["kind"].isin(LINEAR_KINDS) & components["layer"].notna()].copy()
    linear["third"] = [third_of(int(layer), layers[stack]) for stack, layer in zip(linear["stack"], linear["layer"])]
    methods = [m for m in METHODS if m in components.columns]
    rows = []
    for part in ("all", *THIRDS):
        chosen = linear if part == "all" else linear[linear["third"] == part]
        for (stack, kind), block in chosen.groupby(["stack", "kind"], sort=False):
            row = {"group": f"{stack}.{kind}" + ("" if part == "all" else f" ({part})"),
                   "stack": stack, "kind": kind, "third": part, "numel": int(block["numel"].sum())}
            for method in methods:
                row[method] = float((block[method] * block["numel"]).sum() / block["numel"].sum())
            rows.append(row)
    return pd.DataFrame(rows)


# ---- calibration runs, as notebooks and the CLI use them --------------------------------


def calibrate(loaded: LoadedModel, corpus: Corpus, labels: str = "reference", seed: int = 0,
              sizes: list[int] | None = None, n: int | None = None, batch_size: int = 16,
              progress: bool = True, chunk_size: int = 1) -> tuple[pd.DataFrame, Measurement]:
    """Score components on the first `n` (default all) utterances of a seeded order of `corpus`.

    Returns a long table (one row per calibration size and component, with every score) and
    the Measurement (for linear_scores on other subsets, or weight_importance). `chunk_size`
    picks how per-sample gradients are computed (see per_sample_gradients); scores agree to
    float rounding whichever is used.
    """
    order = seeded_order(corpus, seed)
    # Label the whole corpus, whatever the seed: pseudo labels are then decoded (and cached) once.
    texts = label_texts(loaded, corpus, labels, batch_size=batch_size)
    examples, skipped = calibration_examples(loaded, corpus, texts)
    by_id = {example.id: example for example in examples}
    examples = [by_id[i] for i in order if i in by_id][:n]
    sizes = [size for size in (sizes or []) if size < len(examples)] + [len(examples)]
    measurement = measure(loaded.model, examples, sizes=sizes, progress=progress, chunk_size=chunk_size)
    frames = []
    for size in sorted(measurement.snapshots):
        table = component_scores(loaded.model, tensor_scores(measurement, size))
        table.insert(0, "size", size)
        table.insert(0, "seed", seed)
        table.insert(0, "labels", labels)
        table["mean_loss"] = float(np.mean(measurement.losses[:size]))
        frames.append(table)
    result = pd.concat(frames, ignore_index=True)
    result.attrs["skipped"] = skipped
    return result, measurement


def cached_calibrate(loaded: LoadedModel, corpus: Corpus, labels: str = "reference", seed: int = 0,
                     sizes: list[int] | None = None, n: int | None = None, batch_size: int = 16,
                     cache_dir: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """calibrate()'s table, read from `cache_dir` (<key>.csv) when an identical run was done before."""
    key = results.cache_key(kind="sensitivity", version=1, model=loaded.name, weights=loaded.fingerprint,
                            corpus=corpus.name, utterances=results.cache_key(ids=[u.id for u in corpus.utterances]),
                            labels=labels, seed=seed, sizes=sorted(sizes or []), n=n)
    path = Path(cache_dir) / f"{key}.csv" if cache_dir is not None else None
    if path is not None and path.exists():
        table = pd.read_csv(path)
        table["layer"] = table["layer"].astype("Int64")
        return table
    table, _ = calibrate(loaded, corpus, labels, seed, sizes=sizes, n=n, batch_size=batch_size, progress=progress)
    if path is not None:
        results.write_csv_atomic(path, table)
    return table


def sweep(loaded: LoadedModel, pool: Corpus, label_choices: list[str], sizes: list[int], seeds: list[int],
          batch_size: int = 16, cache_dir: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Scores for every label choice x seed x nested size; the whole pool is measured once per label.

    The full pool gives the same scores whatever its order, so the first seed measures all
    of it and the other seeds only the prefix up to the largest size below the pool. Each
    run is cached under `cache_dir`, so an interrupted sweep resumes with the next run.
    """
    frames = []
    largest = max([s for s in sizes if s < len(pool)], default=None)
    for labels in label_choices:
        for index, seed in enumerate(seeds):
            if index > 0 and largest is None:
                break
            frames.append(cached_calibrate(loaded, pool, labels, seed, sizes=sizes, n=None if index == 0 else largest,
                                           batch_size=batch_size, cache_dir=cache_dir, progress=progress))
    return pd.concat(frames, ignore_index=True)


# ---- reliability -------------------------------------------------------------------------


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman rank correlation of two score series over their shared index."""
    shared = a.index.intersection(b.index)
    return float(spearmanr(a[shared].to_numpy(), b[shared].to_numpy()).statistic)


def linear_components(table: pd.DataFrame) -> pd.DataFrame:
    """The prunable layer components (self_attn, cross_attn, ffn per layer): what rankings compare."""
    return table[table["kind"].isin(LINEAR_KINDS) & table["layer"].notna()]


def rank_agreement(columns: dict[str, pd.Series]) -> pd.DataFrame:
    """Symmetric matrix of pairwise Spearman correlations between named score series."""
    names = list(columns)
    matrix = pd.DataFrame(1.0, index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            matrix.loc[a, b] = matrix.loc[b, a] = spearman(columns[a], columns[b])
    return matrix


def stability_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Spearman over linear components of every (labels, seed, size) run against its label's largest run."""
    linear = linear_components(scores)
    rows = []
    for labels, runs in linear.groupby("labels", sort=False):
        largest = runs["size"].max()
        reference = runs[runs["size"] == largest].drop_duplicates("component").set_index("component")
        for (seed, size), run in runs.groupby(["seed", "size"], sort=True):
            if size == largest:
                continue  # the reference itself (the full pool scores the same in any order)
            run = run.set_index("component")
            for method in METHODS:
                rows.append({"labels": labels, "method": method, "seed": seed, "size": size, "reference_size": largest,
                             "spearman": spearman(run[method], reference[method])})
    return pd.DataFrame(rows)


def stable_from(stability: pd.DataFrame, threshold: float = 0.9) -> pd.DataFrame:
    """Per labels x method: the worst Spearman over seeds at each size, and the smallest size
    from which every size and seed reaches `threshold`."""
    worst = stability.groupby(["labels", "method", "size"])["spearman"].min().unstack("size")
    below = worst.lt(threshold)
    sizes = list(worst.columns)

    def first_stable(row: pd.Series) -> int | None:
        """Smallest size with no later size below the threshold."""
        for i, size in enumerate(sizes):
            if not row.iloc[i:].any():
                return int(size)
        return None

    worst.columns = [f"min rho @ {size}" for size in sizes]
    worst[f"stable from (rho >= {threshold})"] = below.apply(first_stable, axis=1).astype("Int64")
    return worst.reset_index()


PAPER_READING = (  # (what the paper concludes, group, direction): "fragile" means above average
    ("decoder FFN is fragile", "decoder.ffn", "fragile"),
    ("decoder self-attention is redundant", "decoder.self_attn", "redundant"),
    ("late encoder layers are redundant", "encoder (late)", "redundant"),
)


def compare_with_paper(groups: pd.DataFrame, method: str) -> pd.DataFrame:
    """Each of the paper's readings against ours: the group's score over the linear-weight mean."""
    overall = groups[groups["third"] == "all"]
    mean = float((overall[method] * overall["numel"]).sum() / overall["numel"].sum())
    late_encoder = groups[(groups["stack"] == "encoder") & (groups["third"] == "late")]
    scores = {row.group: getattr(row, method) for row in overall.itertuples()}
    scores["encoder (late)"] = float((late_encoder[method] * late_encoder["numel"]).sum() / late_encoder["numel"].sum())
    rows = []
    for claim, group, direction in PAPER_READING:
        ratio = scores[group] / mean
        rows.append({"paper": claim, "group": group, "method": method, "score / linear mean": ratio,
                     "agrees": ratio > 1 if direction == "fragile" else ratio < 1})
    return pd.DataFrame(rows)
