"""Parse prune specs and apply one-shot magnitude (or given-importance) masks in place, reversibly.

Spec text (shared by notebooks, CLI and result files): items joined by ``,``, each
``SELECTOR[:local]=SPARSITY``; ``""``, ``"none"`` and ``"dense"`` mean no pruning.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from prunelib.components import LINEAR_KINDS, TensorInfo, list_components, num_layers
from prunelib.ct2 import add_spelling_normalizer

# Kinds a stack-level selector may name; conv and embed are pruned only when named.
_STACK_KINDS = {"encoder": ("self_attn", "ffn", "conv"),
                "decoder": ("self_attn", "cross_attn", "ffn", "embed")}
_LAYER_KINDS = {"encoder": ("self_attn", "ffn"), "decoder": ("self_attn", "cross_attn", "ffn")}
_SELECTOR_RE = re.compile(r"(encoder|decoder)(?:\.layers\[([^\]]*)\])?(?:\.(\w+))?")
_INDEX_RE = re.compile(r"-?\d+")
_DENSE = ("", "none", "dense")

VALID_SELECTORS = (
    "global", "global+embed", "encoder", "decoder",
    "encoder.self_attn", "encoder.ffn", "encoder.conv",
    "decoder.self_attn", "decoder.cross_attn", "decoder.ffn", "decoder.embed",
    "<stack>.layers[i]", "<stack>.layers[a:b]", "<stack>.layers[a:b].<self_attn|cross_attn|ffn>",
)


@dataclass(frozen=True)
class PruneItem:
    """One ``selector[:local]=sparsity`` item of a prune spec."""

    selector: str
    sparsity: float
    local: bool = False

    def __post_init__(self) -> None:
        # Validate here too so hand-built items are as safe as parsed ones; store canonical text.
        object.__setattr__(self, "selector", _parse_selector(self.selector.strip())[0])
        if not 0.0 <= self.sparsity < 1.0:  # also rejects nan
            raise ValueError(f"sparsity {self.sparsity!r} for {self.selector!r} is outside [0, 1)")

    def __str__(self) -> str:
        return f"{self.selector}{':local' if self.local else ''}={self.sparsity!r}"


@dataclass(frozen=True)
class PruneSpec:
    """An ordered tuple of prune items; empty means dense."""

    items: tuple[PruneItem, ...] = ()

    def __str__(self) -> str:
        return ",".join(str(item) for item in self.items) or "dense"

    def __bool__(self) -> bool:
        return bool(self.items)


@dataclass(frozen=True)
class _Selector:
    stacks: tuple[str, ...]
    layers: slice | int | None  # None: not a layer selector
    kind: str | None  # None: all prunable linear kinds
    embed: bool = False  # add the tied embedding (global+embed)


def _bad_selector(text: str, why: str = "unknown selector") -> ValueError:
    return ValueError(f"{why} {text!r}; valid selectors: {', '.join(VALID_SELECTORS)}")


def _parse_layers(text: str, selector: str) -> slice | int:
    """Python-style ``i`` or ``a:b`` (either end optional) inside ``layers[...]``."""
    parts = [p.strip() for p in text.split(":")]
    if len(parts) == 1 and _INDEX_RE.fullmatch(parts[0]):
        return int(parts[0])
    if len(parts) == 2 and all(p == "" or _INDEX_RE.fullmatch(p) for p in parts):
        return slice(*(int(p) if p else None for p in parts))
    raise _bad_selector(selector, f"bad layer index [{text}] in")


def _parse_selector(text: str) -> tuple[str, _Selector]:
    """Canonical text and structure of a selector; raises ValueError listing valid ones."""
    if text in ("global", "global+embed"):
        return text, _Selector(("encoder", "decoder"), None, None, embed=text == "global+embed")
    match = _SELECTOR_RE.fullmatch(text)
    if not match:
        raise _bad_selector(text)
    stack, layer_text, kind = match.groups()
    if layer_text is None:
        if kind is not None and kind not in _STACK_KINDS[stack]:
            raise _bad_selector(text)
        return text, _Selector((stack,), None, kind)
    if kind is not None and kind not in _LAYER_KINDS[stack]:
        raise _bad_selector(text)
    layers = _parse_layers(layer_text, text)
    if isinstance(layers, int):
        index = str(layers)
    else:
        index = ":".join("" if end is None else str(end) for end in (layers.start, layers.stop))
    canonical = f"{stack}.layers[{index}]" + (f".{kind}" if kind else "")
    return canonical, _Selector((stack,), layers, kind)


def _parse_item(text: str) -> PruneItem:
    selector, eq, value = (part.strip() for part in text.partition("="))
    if not eq or not selector or not value:
        raise ValueError(f"malformed prune item {text!r}; expected SELECTOR[:local]=SPARSITY")
    local = selector.endswith(":local")
    if local:
        selector = selector[: -len(":local")].strip()
    _parse_selector(selector)  # selector errors before number errors
    try:
        sparsity = float(value)
    except ValueError:
        raise ValueError(f"sparsity {value!r} in {text!r} is not a number in [0, 1)") from None
    return PruneItem(selector, sparsity, local)


def parse_prune_spec(text: str | PruneSpec | None) -> PruneSpec:
    """Parse ``SELECTOR[:local]=SPARSITY,...`` (a PruneSpec passes through, None is dense)."""
    if isinstance(text, PruneSpec):
        return text
    text = (text or "").strip()
    if text.lower() in _DENSE:
        return PruneSpec()
    return PruneSpec(tuple(_parse_item(item) for item in text.split(",")))


def _check_in_range(layers: slice | int, stack: str, count: int, text: str) -> None:
    """Refuse a layer index or slice end beyond the stack.

    Python would clamp it while the spec's text kept the old range.
    """
    if isinstance(layers, int):
        bad = not -count <= layers < count
    else:
        bad = any(end is not None and not -count <= end <= count for end in (layers.start, layers.stop))
    if bad:
        raise ValueError(f"{text!r} reaches past the {count} {stack} layers of this model "
                         f"(indices {-count}..{count - 1}); give a range inside them")


def _select(selector: _Selector, infos: list[TensorInfo], layer_counts: dict[str, int], text: str) -> list[str]:
    chosen: list[str] = []
    for stack in selector.stacks:
        layers = None
        if selector.layers is not None:
            indices = range(layer_counts.get(stack, 0))
            _check_in_range(selector.layers, stack, len(indices), text)
            layers = {indices[selector.layers]} if isinstance(selector.layers, int) else set(indices[selector.layers])
        for info in infos:
            if info.stack != stack or (layers is not None and info.layer not in layers):
                continue
            if selector.kind in (None, *LINEAR_KINDS):
                wanted = info.prunable and selector.kind in (None, info.kind)
            else:  # conv / embed: weights only, never their biases
                wanted = info.kind == selector.kind
            if wanted or (selector.embed and info.kind == "embed"):
                chosen.append(info.name)
    return chosen


def resolve(spec: PruneSpec | str, model: nn.Module) -> list[tuple[PruneItem, list[str]]]:
    """Parameter names each item selects; raises on empty selections and overlapping items."""
    spec = parse_prune_spec(spec)
    infos = list_components(model)
    counts = num_layers(model)
    owner: dict[str, PruneItem] = {}
    resolved = []
    for item in spec.items:
        names = _select(_parse_selector(item.selector)[1], infos, counts, item.selector)
        if not names:
            layout = ", ".join(f"{n} {stack} layers" for stack, n in counts.items())
            raise ValueError(f"{item.selector!r} selects no tensors in this model ({layout})")
        for name in names:
            if name in owner:
                raise ValueError(f"tensor {name!r} is selected by both {str(owner[name])!r} and "
                                 f"{str(item)!r}; make the items disjoint")
            owner[name] = item
        resolved.append((item, names))
    return resolved


def _lowest(names: list[str], score_of: Callable[[str], torch.Tensor], total: int,
            k: int) -> dict[str, torch.Tensor]:
    """Masks marking exactly the k lowest of the ``total`` scores pooled over ``names``.

    Ties at the threshold go to earlier tensors and earlier flat positions, so the count is exact
    and the choice deterministic.
    """
    if k == 0:
        return {name: torch.zeros_like(score_of(name), dtype=torch.bool) for name in names}
    first = score_of(names[0])
    dtype = torch.promote_types(first.dtype, torch.float32)
    if len(names) == 1:
        pooled = first.reshape(-1).to(dtype)
    else:
        # One flat copy of the scores is the price of an exact pooled k-th value; filled one
        # tensor at a time (no list of copies) and freed before the masks are built.
        pooled = torch.empty(total, dtype=dtype, device=first.device)
        offset = 0
        for name in names:
            score = score_of(name).reshape(-1)
            pooled[offset:offset + score.numel()] = score
            offset += score.numel()
            del score
    threshold = pooled.kthvalue(k).values.item()
    del pooled, first
    masks = {name: score_of(name).to(dtype) <= threshold for name in names}
    excess = sum(int(mask.sum()) for mask in masks.values()) - k
    # Only exact ties at the threshold overshoot k: keep the latest ones.
    for name in reversed(names):
        if excess == 0:
            break
        ties = (score_of(name).to(dtype) == threshold).reshape(-1).flip(0)
        release = ties & (ties.cumsum(0) <= excess)
        masks[name].view(-1).logical_and_(~release.flip(0))
        excess -= int(release.sum())
    return masks


def _scorer(params: dict[str, nn.Parameter], importance: Mapping[str, torch.Tensor] | None,
            names: list[str]) -> Callable[[str], torch.Tensor]:
    """Score lookup for ``names``: fresh |w| (never cached), or checked importance tensors."""
    if importance is None:
        return lambda name: params[name].detach().abs()
    for name in names:
        if name not in importance:
            raise ValueError(f"importance has no scores for selected tensor {name!r}")
        score, shape = importance[name], tuple(params[name].shape)
        if tuple(score.shape) != shape:
            raise ValueError(f"importance for {name!r} has shape {tuple(score.shape)}, expected {shape}")
        if torch.isnan(score).any():
            raise ValueError(f"importance for {name!r} contains NaN")
    return lambda name: importance[name].detach()


@torch.no_grad()
def compute_masks(model: nn.Module, spec: PruneSpec | str,
                  importance: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks (True = kept) for every selected tensor; importance None means |w|."""
    params = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}
    for item, names in resolve(spec, model):
        score_of = _scorer(params, importance, names)
        groups = [[name] for name in names] if item.local else [names]
        for group in groups:
            total = sum(params[name].numel() for name in group)
            for name, drop in _lowest(group, score_of, total, round(item.sparsity * total)).items():
                masks[name] = ~drop.to(params[name].device)
    return masks


@dataclass
class SparsityReport:
    """Achieved sparsity per tensor, per component, per spec item and overall."""

    spec: str
    overall_linear: float  # zeros / numel over prunable linear weights (tied embedding excluded)
    overall_weights: float  # paper denominator: every parameter named *weight*, tied tensor once
    tensors: pd.DataFrame  # one row per distinct parameter tensor
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def components(self) -> pd.DataFrame:
        """Sparsity per stack x layer x kind over prunable and selected tensors."""
        rows = self.tensors[self.tensors["prunable"] | self.tensors["selected_by"].notna()]
        grouped = rows.groupby(["stack", "layer", "kind"], dropna=False, sort=False)[["numel", "zeros"]].sum()
        grouped["sparsity"] = grouped["zeros"] / grouped["numel"]
        return grouped.reset_index()

    def summary(self) -> str:
        """Short text for logs: spec, overall sparsities, per item and per component."""
        lines = [f"spec: {self.spec}",
                 f"sparsity over prunable linear weights: {self.overall_linear:.4%}",
                 f"sparsity over all *weight* parameters (paper): {self.overall_weights:.4%}"]
        for item in self.items:
            lines.append(f"  {item['item']}: requested {item['requested']:.4f}, "
                         f"achieved {item['achieved']:.4f} over {item['numel']} weights "
                         f"in {item['tensors']} tensors")
        table = self.components
        table = table[table["zeros"] > 0]  # untouched components would drown the pruned ones
        if len(table):
            lines.append(table.to_string(index=False))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN/NA become null)."""
        def records(df: pd.DataFrame) -> list[dict[str, Any]]:
            return json.loads(df.to_json(orient="records"))
        return {"spec": self.spec, "overall_linear": self.overall_linear,
                "overall_weights": self.overall_weights, "items": self.items,
                "components": records(self.components), "tensors": records(self.tensors)}


@torch.no_grad()
def sparsity_report(model: nn.Module, spec: PruneSpec | str | None = None) -> SparsityReport:
    """Measure the zeros actually in the model, per tensor and against the spec's items."""
    spec = parse_prune_spec(spec)
    resolved = resolve(spec, model) if spec else []
    selected_by = {name: str(item) for item, names in resolved for name in names}
    params = dict(model.named_parameters())
    rows = []
    for info in list_components(model):
        zeros = int((params[info.name] == 0).sum())
        rows.append({"name": info.name, "stack": info.stack, "layer": info.layer, "kind": info.kind,
                     "sub": info.sub, "numel": info.numel, "zeros": zeros,
                     "sparsity": zeros / info.numel if info.numel else 0.0,
                     "prunable": info.prunable, "selected_by": selected_by.get(info.name)})
    df = pd.DataFrame(rows)
    df["layer"] = df["layer"].astype("Int64")

    def fraction(rows_: pd.DataFrame) -> float:
        numel = int(rows_["numel"].sum())
        return int(rows_["zeros"].sum()) / numel if numel else 0.0

    items = []
    for item, names in resolved:
        chosen = df[df["name"].isin(names)]
        items.append({"item": str(item), "requested": item.sparsity, "achieved": fraction(chosen),
                      "numel": int(chosen["numel"].sum()), "tensors": len(names)})
    is_weight = df["name"].str.contains("weight", regex=False)
    return SparsityReport(spec=str(spec), overall_linear=fraction(df[df["prunable"]]),
                          overall_weights=fraction(df[is_weight]), tensors=df, items=items)


@contextmanager
def pruned(model: nn.Module, spec: PruneSpec | str, importance: Mapping[str, torch.Tensor] | None = None,
           weights: Mapping[str, torch.Tensor] | None = None) -> Iterator[SparsityReport]:
    """Zero the selected weights in place for the ``with`` body, then restore them bit-exactly.

    `weights` replaces whole tensors first (methods such as SparseGPT that update the weights they
    keep); the masks, chosen from `importance` as always, are applied on top of them.
    """
    spec = parse_prune_spec(spec)
    params = dict(model.named_parameters())
    unknown = sorted(set(weights or {}) - set(params))
    if unknown:
        raise ValueError(f"replacement weights for unknown tensors {unknown[:3]}")
    for name, value in (weights or {}).items():
        if tuple(value.shape) != tuple(params[name].shape):
            raise ValueError(f"replacement for {name!r} has shape {tuple(value.shape)}, "
                             f"expected {tuple(params[name].shape)}")
    selected = {name for _, names in resolve(spec, model) for name in names}
    unselected = sorted(set(weights or {}) - selected)
    if unselected:  # the spec names what a prune touches (cache keys, encoder reuse): weights may not go beyond it
        raise ValueError(f"replacement weights for tensors the spec {str(spec)!r} does not select: {unselected[:3]}")
    replaced: dict[str, torch.Tensor] = {}
    saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        with torch.no_grad():
            for name, value in (weights or {}).items():
                replaced[name] = params[name].detach().clone()  # a whole copy: every value may change
                params[name].data.copy_(value)
            masks = compute_masks(model, spec, importance)  # of the weights in place: magnitude sees the new ones
            for name in list(masks):
                drop = ~masks.pop(name)
                # Only the zeroed values are kept, so the undo costs a bool mask plus k values.
                saved[name] = (drop, params[name].data[drop])
                params[name].data.masked_fill_(drop, 0)
        yield sparsity_report(model, spec)
    finally:
        with torch.no_grad():
            for name, (drop, values) in saved.items():
                params[name].data.masked_scatter_(drop, values)
            for name, value in replaced.items():
                params[name].data.copy_(value)


@torch.no_grad()
def prune_permanently(model: nn.Module, spec: PruneSpec | str,
                      importance: Mapping[str, torch.Tensor] | None = None) -> SparsityReport:
    """Zero the selected weights in place for good and report the result."""
    spec = parse_prune_spec(spec)
    params = dict(model.named_parameters())
    for name, keep in compute_masks(model, spec, importance).items():
        params[name].data.masked_fill_(~keep, 0)
    return sparsity_report(model, spec)


EXPORT_MARKER = "prunelib_export.json"  # written into every export; only folders holding it are ever replaced


def export_marker(folder: Path) -> dict | None:
    """The marker of an export this module wrote (spec, and what `about` held), or None if `folder` is none."""
    try:
        marker = json.loads((Path(folder) / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("written_by") == "prunelib" else None


def is_export(folder: Path) -> bool:
    """Whether `folder` is an export this module wrote (it holds our marker file)."""
    return export_marker(folder) is not None


def export_pruned(model: nn.Module, processor: Any, out_dir: str | Path,
                  report: SparsityReport | None = None, about: dict | None = None) -> Path:
    """save_pretrained the model (and processor) and write sparsity_report.json beside it.

    `about` (for example the allocator and its target) is stored in the marker file, where
    `export_marker` reads it back: a later notebook learns what an export is without parsing its name.

    Written into a fresh temporary folder beside `out_dir` and moved into place at the end, so an
    interrupted export never leaves a half-written model where a later notebook would load it.
    `out_dir` may be new, empty, or an earlier export (recognised by its marker file); anything
    else is refused, so a mistyped path never replaces somebody's folder.
    """
    out = Path(out_dir)
    if out.exists() and not is_export(out) and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an earlier prunelib export (no {EXPORT_MARKER}): "
                         "choose a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    earlier = None
    try:
        model.save_pretrained(fresh)
        if processor is not None:
            add_spelling_normalizer(processor.tokenizer)  # normalizer.json, as hub folders have it
            processor.save_pretrained(fresh)
        report = report if report is not None else sparsity_report(model)
        (fresh / "sparsity_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        (fresh / EXPORT_MARKER).write_text(
            json.dumps({**(about or {}), "written_by": "prunelib", "spec": report.spec}) + "\n"
        )
        if out.is_dir() and any(out.iterdir()):
            # Move the earlier export aside first: a directory with entries cannot be renamed over.
            earlier = Path(tempfile.mkdtemp(prefix=f".{out.name}.earlier-", dir=out.parent))
            out.rename(earlier / out.name)
        elif out.exists():
            out.rmdir()
        fresh.rename(out)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        if earlier is not None and not out.exists():
            (earlier / out.name).rename(out)  # put the earlier export back where it was
            earlier.rmdir()
        raise
    if earlier is not None:
        shutil.rmtree(earlier)  # holds only the earlier export, checked by its marker above
    return out
