"""Turn a target overall sparsity into a prune spec (plus importance scores) by one of several rules.

Every allocator except the paper's fixed table hits the target over the *prunable linear
weights* (the q/k/v/out and fc1/fc2 matrices of every layer: what `SparsityReport.overall_linear`
counts) to within rounding, so that allocators are compared at matched sparsity on one
denominator. The paper's denominator (every parameter named *weight*, the tied embedding once)
is reported beside it by `reached_sparsity`. Allocators:

* ``global``        one magnitude threshold pooled over all prunable linear weights.
* ``global+embed``  the paper's baseline: the pool also holds the tied token embedding / output
                    projection; its sparsity s is solved so the linear weights reach the target
                    (the embedding's zeros come on top).
* ``uniform``       every linear matrix pruned by magnitude to the same sparsity.
* ``random``        the uniform per-matrix counts, weights chosen by seeded random scores.
* ``wanda``         the uniform per-matrix counts, weights chosen by Wanda's |W| x ||x_j||_2, compared
                    within each output row.
* ``owl``           per-layer sparsity lowered where Wanda scores have more outliers (OWL), Wanda within.
* ``sensitivity-fisher`` / ``sensitivity-gradient``  per-component sparsities by greedy water-filling
                    on a predicted damage built from notebook 02's component scores, with a cap.
* ``paper``         the paper's hand-set per-component table (not matched: it is what it is).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from prunelib import sparsegpt as sgpt
from prunelib.calibration import Example, calibration_examples, label_texts
from prunelib.components import TensorInfo, layer_thirds, layers_selector, list_components, num_layers
from prunelib.corpora import Corpus
from prunelib.models import LoadedModel, tensors_digest
from prunelib.pruning import SparsityReport, parse_prune_spec, pruned, resolve

ALLOCATORS = ("global+embed", "global", "uniform", "random", "wanda", "owl", "sparsegpt", "sparsegpt+owl",
              "sensitivity-fisher", "sensitivity-gradient", "empirical", "sparsegpt+empirical", "paper")
MATCHED = tuple(name for name in ALLOCATORS if name != "paper")  # hit the requested target
NEEDS_NORMS = ("wanda", "owl", "sparsegpt+owl")  # read input-activation norms of calibration audio
NEEDS_EXAMPLES = ("sparsegpt", "sparsegpt+owl", "sparsegpt+empirical")  # SparseGPT on teacher-forced examples
NEEDS_CURVES = ("empirical", "sparsegpt+empirical")  # allocate from damage curves measured on calibration speakers
# Per-component sparsity from a measured sensitivity, magnitude inside: what the paper's "sensitivity-aware"
# claim is judged on (SparseGPT inside the empirical allocation is another method, judged with the rest).
SENSITIVITY_AWARE = ("sensitivity-fisher", "sensitivity-gradient", "empirical")
NEEDS_CALIBRATION = tuple(dict.fromkeys(NEEDS_NORMS + NEEDS_EXAMPLES))  # either: calibration audio is read
SCORE_METHODS = ("fisher", "gradient")  # component scores the sensitivity-aware allocator understands

# The paper's final "sensitivity-aware" table (pruning_and_storing_as_sparse.py), per matrix.
PAPER_TABLE = {"encoder.ffn": 0.5, "encoder.self_attn": 0.4, "decoder.self_attn": 0.5,
               "decoder.cross_attn": 0.45, "decoder.embed": 0.25, "encoder.conv": 0.3}
PAPER_DECODER_FFN = {"early": 0.25, "middle": 0.45, "late": 0.30}  # by third of the decoder layers


@dataclass(frozen=True)
class Allocation:
    """A prune spec and the per-weight scores it needs, ready for `pruned` or `evaluate`."""

    name: str  # allocator label, e.g. "sensitivity-fisher" or "random (seed 1)"
    target: float | None  # requested sparsity over prunable linear weights; None for the paper's table
    spec: str  # prune-spec text
    importance: Mapping[str, torch.Tensor] | None = None  # None: magnitude
    importance_name: str = "magnitude"  # names the scores (and weights) in evaluation cache keys
    weights: Mapping[str, torch.Tensor] | None = None  # replacement tensors (SparseGPT updates what it keeps)


def linear_tensors(model: nn.Module) -> list[TensorInfo]:
    """The prunable linear weight tensors (the target's denominator), in model order."""
    return [info for info in list_components(model) if info.prunable]


def _check_target(target: float) -> None:
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must lie in [0, 1), got {target!r}")


def _fmt(sparsity: float) -> str:
    """Sparsity as short spec text: 6 decimals move the overall count by far less than 0.1 pp."""
    return f"{round(float(sparsity), 6)!r}"


# ---- magnitude baselines -------------------------------------------------------------------


@torch.no_grad()
def global_magnitude(model: nn.Module, target: float, embed: bool = False) -> Allocation:
    """`global=target`, or `global+embed=s` with s solved so the linear weights reach `target`."""
    _check_target(target)
    if not embed:
        return Allocation("global", target, f"global={_fmt(target)}")
    params = dict(model.named_parameters())
    linear = torch.cat([params[info.name].detach().abs().reshape(-1) for info in linear_tensors(model)])
    embeds = [params[info.name].detach().abs().reshape(-1) for info in list_components(model) if info.kind == "embed"]
    k = round(target * linear.numel())
    if k == 0:
        return Allocation("global+embed", target, "global+embed=0.0")
    # The pooled threshold that prunes exactly k linear weights is their k-th smallest magnitude;
    # the embedding then loses every weight below it too.
    threshold = linear.kthvalue(k).values
    extra = sum(int((e < threshold).sum()) for e in embeds)
    pool = linear.numel() + sum(e.numel() for e in embeds)
    return Allocation("global+embed", target, f"global+embed={(k + extra) / pool!r}")


def uniform(model: nn.Module, target: float) -> Allocation:
    """Every prunable linear matrix pruned by magnitude to `target` on its own."""
    _check_target(target)
    return Allocation("uniform", target, f"global:local={_fmt(target)}")


def random_scores(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded uniform random scores for every prunable linear weight (same seed, same scores)."""
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {info.name: torch.rand(params[info.name].shape, generator=generator) for info in linear_tensors(model)}


def random_allocation(model: nn.Module, target: float, seed: int) -> Allocation:
    """The uniform per-matrix counts, with the pruned weights drawn at random by `seed`."""
    _check_target(target)
    return Allocation(f"random (seed {seed})", target, f"global:local={_fmt(target)}",
                      importance=random_scores(model, seed), importance_name=f"random-seed{seed}")


# ---- the paper's table ---------------------------------------------------------------------


def paper_schedule(model: nn.Module) -> Allocation:
    """The paper's hand-set table, each matrix pruned by magnitude on its own."""
    items = [f"{selector}:local={sparsity!r}" for selector, sparsity in PAPER_TABLE.items()]
    thirds = layer_thirds(num_layers(model)["decoder"])
    for third, sparsity in PAPER_DECODER_FFN.items():
        layers = thirds[third]
        if layers:  # a stack of fewer than 3 layers has empty thirds
            items.append(f"{layers_selector('decoder', layers)}.ffn:local={sparsity!r}")
    return Allocation("paper", None, ",".join(items))


# ---- sensitivity-aware water-filling ---------------------------------------------------------


def tensors_by_component(model: nn.Module) -> dict[str, list[TensorInfo]]:
    """Prunable linear tensors grouped by component label (``decoder.layers[3].ffn``), in model order."""
    groups: dict[str, list[TensorInfo]] = {}
    for info in linear_tensors(model):
        groups.setdefault(info.component, []).append(info)
    return groups


@torch.no_grad()
def _damage_curves(model: nn.Module, groups: dict[str, list[TensorInfo]], power: int,
                   grid: np.ndarray, max_samples: int = 1 << 16) -> dict[str, np.ndarray]:
    """Per component, sum of |w|^power over the weights pruned at each grid sparsity (per matrix).

    Each matrix's magnitude distribution is read from at most `max_samples` evenly strided weights
    (exact below that): the curves only rank components, and sorting every weight of a large
    model for each call would dominate the allocation's cost.
    """
    params = dict(model.named_parameters())
    curves = {}
    for component, infos in groups.items():
        curve = np.zeros(len(grid))
        for info in infos:
            flat = params[info.name].detach().reshape(-1)
            sample = flat[::-(-flat.numel() // max_samples)]  # ceil(n / max_samples) stride
            values = sample.abs().sort().values.double().pow(power).cpu()
            cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), values.cumsum(0)]).numpy()
            # Scale the sample's partial sums up to the whole matrix.
            curve += cumulative[np.round(grid * sample.numel()).astype(int)] * (info.numel / sample.numel())
        curves[component] = curve
    return curves


def _water_fill(numel: Mapping[str, int], grid: np.ndarray, target: float,
                step_cost: Callable[[str, int], float]) -> dict[str, float]:
    """Greedy water-filling: sparsity per component reaching `target` of all their weights.

    In steps of the `grid` (0 .. cap), the next step goes to the component whose next step costs
    least per weight (`step_cost(component, index)`), until the pruned count reaches the target;
    the last step is cut short so the target is met exactly. Ties go to the earlier component.
    Optimal when every component's cumulative cost is convex over the grid.
    """
    steps = len(grid) - 1
    need = target * sum(numel.values())
    level = dict.fromkeys(numel, 0)  # grid index reached per component
    sparsity = dict.fromkeys(numel, 0.0)
    done = 0.0
    while need - done > 1e-9:
        best, best_cost = None, np.inf
        for c in numel:
            if level[c] >= steps:
                continue
            cost = step_cost(c, level[c])
            if cost < best_cost:  # strict: ties go to the earlier component, deterministically
                best, best_cost = c, cost
        if best is None:  # every component at the cap: only float rounding can leave a remainder
            break
        i = level[best]
        take = min(grid[i + 1] - grid[i], (need - done) / numel[best])
        sparsity[best] = grid[i] + take
        level[best] = i + 1
        done += take * numel[best]
    return sparsity


def sensitivity_aware(model: nn.Module, target: float, scores: Mapping[str, float] | pd.Series,
                      method: str = "fisher", cap: float = 0.7, step: float = 0.01) -> Allocation:
    """Per-component sparsities that reach `target` with the least predicted damage, none above `cap`.

    Inputs: `scores` maps each prunable component label (as notebook 02 writes them, e.g.
    ``decoder.layers[3].ffn``) to its mean per-weight score. The predicted damage of pruning the
    fraction p of a component (each of its matrices by magnitude) replaces the unknown per-weight
    score by the component's mean score S_c:
    ``fisher``: 0.5 * S_c * sum w^2 over the pruned weights (Optimal Brain Damage, diagonal Fisher);
    ``gradient``: S_c * sum |w| (first-order Taylor with the paper's mean |gradient|).
    Rule (greedy water-filling): in steps of `step`, give the next step of sparsity to the component
    whose next weights cost least per weight, until the pruned count reaches `target`; the last
    step is cut short so the target is met exactly. A component at `cap` takes no more.
    """
    _check_target(target)
    if method not in SCORE_METHODS:
        raise ValueError(f"method must be one of {SCORE_METHODS}, got {method!r}")
    if not 0.0 < cap < 1.0:
        raise ValueError(f"cap must lie in (0, 1), got {cap!r}")
    if target > cap:
        raise ValueError(f"target {target} cannot be reached with no component above cap {cap}")
    groups = tensors_by_component(model)
    scores = dict(scores)
    missing = [c for c in groups if c not in scores]
    if missing:
        raise ValueError(f"no {method} score for components {missing[:5]} (of {len(missing)})")
    bad = [c for c in groups if not np.isfinite(scores[c]) or scores[c] < 0]
    if bad:
        raise ValueError(f"scores must be finite and non-negative; bad for {bad[:5]}")
    steps = int(np.ceil(cap / step - 1e-9))
    grid = np.minimum(np.arange(steps + 1) * step, cap)
    power, factor = (2, 0.5) if method == "fisher" else (1, 1.0)
    curves = _damage_curves(model, groups, power, grid)
    numel = {c: sum(info.numel for info in infos) for c, infos in groups.items()}

    def step_cost(c: str, i: int) -> float:
        added = (grid[i + 1] - grid[i]) * numel[c]
        return factor * scores[c] * (curves[c][i + 1] - curves[c][i]) / added

    sparsity = _water_fill(numel, grid, target, step_cost)
    items = [f"{c}:local={_fmt(p)}" for c, p in sparsity.items() if p > 0]
    return Allocation(f"sensitivity-{method}", target, ",".join(items) or "dense")


# ---- empirical: allocation from measured damage ------------------------------------------------

EMPIRICAL_KINDS = {"encoder": ("self_attn", "ffn"), "decoder": ("self_attn", "cross_attn", "ffn")}


def empirical_groups(model: nn.Module) -> dict[str, str]:
    """The groups whose damage is measured: each kind of each stack, per third of its layers, as {label: selector}."""
    layers = num_layers(model)
    groups = {}
    for stack, kinds in EMPIRICAL_KINDS.items():
        for kind in kinds:
            for third, span in layer_thirds(layers[stack]).items():
                if span:  # a stack of fewer than 3 layers has empty thirds
                    groups[f"{stack} {kind} ({third})"] = f"{layers_selector(stack, span)}.{kind}"
    return groups


def _lower_hull(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The lower convex envelope of points (xs sorted), evaluated at xs."""
    hull: list[int] = []
    for i in range(len(xs)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or above the chord from a to i: it is not on the lower hull
            if (ys[b] - ys[a]) * (xs[i] - xs[a]) >= (ys[i] - ys[a]) * (xs[b] - xs[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return np.interp(xs, xs[hull], ys[hull])


def empirical(model: nn.Module, target: float, curves: pd.DataFrame, cap: float = 0.7,
              step: float = 0.01) -> Allocation:
    """Per-group sparsities that reach `target` with the least damage predicted from measured curves.

    `curves` has one row per (selector, sparsity) with the measured `damage` (WER change against
    dense on calibration utterances, that group alone pruned by magnitude within each matrix);
    dense (sparsity 0, damage 0) is added to every curve. Rule:
    1. each curve is replaced by the lower convex envelope of its points, interpolated linearly
       (a steep first step followed by flat ones is priced at its average, so the greedy rule
       sees past it; a point above the envelope, a bump, is bridged);
    2. the predicted damage of an allocation is the sum over groups (additivity is assumed;
       notebook 04's evaluation on held-out speakers tests it);
    3. greedy water-filling on those convex curves, in steps of `step` up to the smaller of `cap`
       and the largest measured sparsity, is then optimal, and meets the target over the
       prunable linear weights exactly.
    The groups must cover every prunable matrix.
    """
    _check_target(target)
    groups = list(dict.fromkeys(curves["selector"]))
    numel, covered = {}, set()
    params = dict(model.named_parameters())
    for selector in groups:
        (_, names), = resolve(f"{selector}=0.5", model)
        numel[selector] = sum(params[name].numel() for name in names)
        covered |= set(names)
    missing = {info.name for info in linear_tensors(model)} - covered
    if missing:
        raise ValueError(f"the damage curves cover no group holding {sorted(missing)[:3]}")
    reach = min(cap, float(curves.groupby("selector")["sparsity"].max().min()))
    if target > reach:
        raise ValueError(f"target {target} lies beyond the measured curves or the cap ({reach})")
    steps = int(np.ceil(reach / step - 1e-9))
    grid = np.minimum(np.arange(steps + 1) * step, reach)
    predicted = {}
    for selector, block in curves.groupby("selector", sort=False):
        block = block.sort_values("sparsity")
        xs = np.array([0.0, *block["sparsity"]], dtype=float)
        ys = np.array([0.0, *block["damage"]], dtype=float)
        predicted[selector] = np.interp(grid, xs, _lower_hull(xs, ys))

    def step_cost(c: str, i: int) -> float:
        return (predicted[c][i + 1] - predicted[c][i]) / ((grid[i + 1] - grid[i]) * numel[c])

    sparsity = _water_fill(numel, grid, target, step_cost)
    items = [f"{c}:local={_fmt(p)}" for c, p in sparsity.items() if p > 0]
    return Allocation("empirical", target, ",".join(items) or "dense")


# ---- Wanda and OWL -------------------------------------------------------------------------


@torch.no_grad()
def collect_input_norms(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """L2 norm over every token of each input channel of every prunable linear layer.

    Each batch is passed as `model(**batch)`: give `input_features` and teacher-forced
    `decoder_input_ids` (for example from `calibration.calibration_examples`) so that the
    decoder's layers see real inputs. Returns {weight name: (in_features,) norms}.
    """
    modules = dict(model.named_modules())
    names = [info.name for info in linear_tensors(model)]
    linears = {name: modules[name.rsplit(".", 1)[0]] for name in names}
    sums = {
        name: torch.zeros(m.in_features, dtype=torch.float64, device=m.weight.device) for name, m in linears.items()
    }

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0].detach().reshape(-1, module.in_features).double()
            sums[name] += x.square().sum(0)
        return hook

    handles = [linears[name].register_forward_hook(hook_for(name)) for name in names]
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in batches:
            model(**batch, use_cache=False)
            count += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("collect_input_norms needs at least one batch")
    return {name: total.sqrt().float() for name, total in sums.items()}


def reference_examples(loaded: LoadedModel, calibration: Corpus) -> tuple[list[Example], list[str]]:
    """Teacher-forced examples of `calibration` with sentence-cased references as decoder input, and the ids skipped.

    Utterances over 30 s or unreadable are skipped, as in the sensitivity scores.
    """
    examples, skipped = calibration_examples(loaded, calibration, label_texts(loaded, calibration, "reference"))
    if not examples:
        raise ValueError(f"no usable calibration utterance in {calibration.name} (all over 30 s or unreadable)")
    return examples, skipped


def example_norms(model: nn.Module, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """`collect_input_norms` over teacher-forced examples, one pass each."""
    return collect_input_norms(model, [{"input_features": e.input_features[None],
                                        "decoder_input_ids": e.decoder_input_ids[None]} for e in examples])


def calibration_norms(loaded: LoadedModel, calibration: Corpus) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`collect_input_norms` over `calibration`, one teacher-forced pass per utterance, and the ids skipped."""
    examples, skipped = reference_examples(loaded, calibration)
    return example_norms(loaded.model, examples), skipped


def _row_ranks(score: torch.Tensor) -> torch.Tensor:
    """Rank of each entry within its row (0 = smallest), as float scores."""
    order = torch.argsort(score, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order).contiguous())
    return ranks.float()


@torch.no_grad()
def wanda_importance(
    model: nn.Module, norms: Mapping[str, torch.Tensor], per_row: bool = True
) -> dict[str, torch.Tensor]:
    """Wanda scores |W_ij| * ||x_j||_2 per prunable linear weight, for `pruned(..., importance=)`.

    Wanda compares weights within each output row. The pruner selects per matrix (`:local`), so
    with `per_row` the scores are replaced by their rank within the row: the k lowest ranks of a
    matrix are then the lowest floor(k/rows) or ceil(k/rows) Wanda scores of every row, which is
    Wanda's per-row selection. `per_row=False` returns the raw scores (compared per matrix).
    """
    params = dict(model.named_parameters())
    scores = {}
    for name, norm in norms.items():
        weight = params[name].detach()
        if norm.shape != (weight.shape[1],):
            raise ValueError(f"norms for {name!r} have shape {tuple(norm.shape)}, expected ({weight.shape[1]},)")
        score = weight.abs() * norm.to(weight.dtype)[None, :]
        scores[name] = _row_ranks(score) if per_row else score
    return scores


def wanda(model: nn.Module, target: float, norms: Mapping[str, torch.Tensor],
          importance: Mapping[str, torch.Tensor] | None = None) -> Allocation:
    """Every linear matrix to `target`, weights chosen per output row by the Wanda score.

    `importance`: `wanda_importance(model, norms)` computed once, to reuse across targets.
    """
    _check_target(target)
    importance = importance if importance is not None else wanda_importance(model, norms)
    return Allocation("wanda", target, f"global:local={_fmt(target)}",
                      importance=importance, importance_name=f"wanda-{tensors_digest(norms)}")


@torch.no_grad()
def outlier_ratios(model: nn.Module, norms: Mapping[str, torch.Tensor], outlier_m: float = 5.0) -> pd.Series:
    """Per layer (``encoder.layers[2]``): share of Wanda scores above `outlier_m` x the layer's mean."""
    raw = wanda_importance(model, norms, per_row=False)
    by_layer: dict[str, list[torch.Tensor]] = {}
    for info in linear_tensors(model):
        by_layer.setdefault(f"{info.stack}.layers[{info.layer}]", []).append(raw[info.name].reshape(-1))
    ratios = {}
    for layer, parts in by_layer.items():
        scores = torch.cat(parts)
        ratios[layer] = float((scores > outlier_m * scores.mean()).double().mean())
    return pd.Series(ratios, name="outlier_ratio")


def _shift_to_target(base: np.ndarray, weights: np.ndarray, target: float, cap: float) -> np.ndarray:
    """base + c clipped to [0, cap], with c bisected so the weighted mean equals `target`."""
    low, high = -1.0 - base.max(), 1.0 - base.min()
    for _ in range(100):
        mid = (low + high) / 2
        if np.dot(np.clip(base + mid, 0.0, cap), weights) < target:
            low = mid
        else:
            high = mid
    return np.clip(base + (low + high) / 2, 0.0, cap)


def owl(model: nn.Module, target: float, norms: Mapping[str, torch.Tensor], lam: float = 0.08,
        outlier_m: float = 5.0, cap: float = 0.95, importance: Mapping[str, torch.Tensor] | None = None) -> Allocation:
    """OWL: layer sparsity target - lam .. target + lam, lowest where outliers are most common; Wanda within.

    As in OWL, each layer's outlier ratio (`outlier_ratios`) is min-max scaled to [0, 2 lam] and
    subtracted; the layers' mean is then shifted so the linear weights reach `target` exactly.
    Unlike OWL's unweighted mean, the shift weighs layers by their linear weights (Whisper's
    decoder layers are larger than its encoder layers, by the cross-attention). `importance`: as
    for `wanda`.
    """
    _check_target(target)
    if target > cap:
        raise ValueError(f"target {target} above cap {cap}")
    ratios = outlier_ratios(model, norms, outlier_m)
    numel: dict[str, int] = {}
    for info in linear_tensors(model):
        layer = f"{info.stack}.layers[{info.layer}]"
        numel[layer] = numel.get(layer, 0) + info.numel
    values = ratios[list(numel)].to_numpy()
    spread = values.max() - values.min()
    scaled = (values - values.min()) / spread * 2 * lam if spread > 0 else np.full(len(values), lam)
    weights = np.array(list(numel.values()), dtype=float)
    sparsity = _shift_to_target(target - scaled, weights / weights.sum(), target, cap)
    items = [f"{layer}:local={_fmt(p)}" for layer, p in zip(numel, sparsity, strict=True) if p > 0]
    importance = importance if importance is not None else wanda_importance(model, norms)
    return Allocation("owl", target, ",".join(items) or "dense", importance=importance,
                      importance_name=f"wanda-{tensors_digest(norms)}")


# ---- SparseGPT inside any allocation ----------------------------------------------------------


def with_sparsegpt(model: nn.Module, allocation: Allocation, examples: Sequence[Example],
                   progress: bool = False, cache_dir: Path | None = None, **options) -> Allocation:
    """`allocation`'s weights per matrix (as its spec takes them by magnitude), chosen and compensated by SparseGPT.

    Named ``sparsegpt`` on the uniform allocation, ``sparsegpt+<allocator>`` on another one.
    `cache_dir`: where calibrations are kept for reruns (`sparsegpt.cached_sparsegpt`; None: not
    kept). `options` go to `sparsegpt.sparsegpt` (blocksize, percdamp, mask_block).
    """
    result = sgpt.cached_sparsegpt(model, allocation.spec, examples, cache_dir, progress=progress, **options)
    name = "sparsegpt" if allocation.name == "uniform" else f"sparsegpt+{allocation.name}"
    return Allocation(name, allocation.target, allocation.spec, importance=result.keep_scores(),
                      importance_name=f"sparsegpt-{result.digest()}", weights=result.weights)


# ---- one entry point and the check -----------------------------------------------------------


def allocate(name: str, model: nn.Module, target: float, scores: pd.DataFrame | None = None,
             norms: Mapping[str, torch.Tensor] | None = None, seed: int = 0, cap: float = 0.7,
             owl_lambda: float = 0.08, owl_outlier: float = 5.0,
             wanda_scores: Mapping[str, torch.Tensor] | None = None,
             examples: Sequence[Example] | None = None, curves: pd.DataFrame | None = None,
             cache_dir: Path | None = None) -> Allocation:
    """The allocation of allocator `name` (one of ALLOCATORS) at `target`.

    `scores`: per-component table indexed by component with `fisher` and `gradient` columns
    (sensitivity allocators); `norms`: `collect_input_norms` output (wanda, owl), with
    `wanda_scores` = `wanda_importance(model, norms)` to compute them once for many targets;
    `examples`: teacher-forced calibration examples (the SparseGPT allocators), whose calibrations
    are kept under `cache_dir` when given; `curves`: damage curves measured on calibration
    utterances (`sweep.damage_curves`; the empirical allocators).
    """
    if name in NEEDS_EXAMPLES:
        if not examples:
            raise ValueError(f"{name} needs teacher-forced calibration examples (reference_examples)")
        base = name.split("+", 1)[1] if "+" in name else "uniform"
        inner = allocate(base, model, target, norms=norms, owl_lambda=owl_lambda, owl_outlier=owl_outlier,
                         wanda_scores=wanda_scores, cap=cap, curves=curves)
        return with_sparsegpt(model, inner, examples, cache_dir=cache_dir)
    if name == "empirical":
        if curves is None:
            raise ValueError("empirical needs damage curves measured on calibration utterances (sweep.damage_curves)")
        return empirical(model, target, curves, cap=cap)
    if name in ("global", "global+embed"):
        return global_magnitude(model, target, embed=name == "global+embed")
    if name == "uniform":
        return uniform(model, target)
    if name == "random":
        return random_allocation(model, target, seed)
    if name == "paper":
        return paper_schedule(model)
    if name in NEEDS_NORMS:
        if norms is None:
            raise ValueError(f"{name} needs input-activation norms (collect_input_norms)")
        if name == "wanda":
            return wanda(model, target, norms, importance=wanda_scores)
        return owl(model, target, norms, owl_lambda, owl_outlier, importance=wanda_scores)
    if name.startswith("sensitivity-"):
        method = name.split("-", 1)[1]
        if scores is None or method not in scores:
            raise ValueError(f"{name} needs a per-component table of {method} scores")
        return sensitivity_aware(model, target, scores[method], method=method, cap=cap)
    raise ValueError(f"unknown allocator {name!r}; known: {', '.join(ALLOCATORS)}")


def allocation_plan(model: nn.Module, allocators: Sequence[str], targets: Sequence[float], seeds: Sequence[int] = (0,),
                    seed: int = 0, **settings) -> list[Allocation]:
    """Every allocator of `allocators` at every target (the random one once per seed), then the paper's table.

    `settings` go to `allocate` (scores, norms, cap, owl_lambda, owl_outlier, wanda_scores, examples, curves,
    cache_dir).
    """
    jobs = [(target, name, allocation_seed) for target in targets for name in allocators if name != "paper"
            for allocation_seed in (seeds if name == "random" else [seed])]
    plan = []
    # SparseGPT's calibration takes minutes per allocation on a CPU: show where the plan is.
    with tqdm(jobs, desc="allocating", unit="allocation") as bar:
        for target, name, allocation_seed in bar:
            bar.set_postfix_str(f"{name} {target:.0%}")
            plan.append(allocate(name, model, target, seed=allocation_seed, **settings))
    if "paper" in allocators:
        plan.append(paper_schedule(model))
    return plan


@torch.no_grad()
def magnitude_scale(model: nn.Module, quantile: float = 0.4) -> pd.DataFrame:
    """Per group of weights (``encoder.ffn``, ``decoder.embed``): size, median |w|, share below the pooled quantile.

    Why one global threshold is not neutral: groups whose weights are small lose far more than `quantile`.
    """
    params = dict(model.named_parameters())
    groups: dict[str, list[torch.Tensor]] = {}
    for info in list_components(model):
        if info.prunable or info.kind == "embed":
            groups.setdefault(f"{info.stack}.{info.kind}", []).append(params[info.name].detach().abs().reshape(-1))
    magnitudes = {group: torch.cat(parts) for group, parts in groups.items()}
    pooled = torch.cat(list(magnitudes.values()))
    threshold = pooled.kthvalue(int(quantile * pooled.numel())).values.item()
    return pd.DataFrame(
        {
            group: {
                "weights": values.numel(),
                "median |w|": values.median().item(),
                f"below the pooled {quantile:.0%} quantile": (values < threshold).double().mean().item(),
            }
            for group, values in magnitudes.items()
        }
    ).T


def reached_sparsity(model: nn.Module, allocation: Allocation) -> SparsityReport:
    """Apply the allocation temporarily and report the sparsity it reaches (weights restored)."""
    with pruned(model, parse_prune_spec(allocation.spec), importance=allocation.importance,
                weights=allocation.weights) as report:
        return report


def component_sparsity(report: SparsityReport) -> pd.Series:
    """Sparsity per component label (``decoder.layers[3].ffn``, ``decoder.embed``) from a report."""
    table = report.components
    labels = [f"{stack}.{kind}" if pd.isna(layer) else f"{stack}.layers[{int(layer)}].{kind}"
              for stack, layer, kind in zip(table["stack"], table["layer"], table["kind"], strict=True)]
    return pd.Series(table["sparsity"].to_numpy(), index=labels, name="sparsity")
