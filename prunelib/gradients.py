"""Per-sample gradients of the teacher-forced loss, and the four per-tensor scores they give.

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

from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from prunelib.calibration import Example, example_loss

METHODS = ("gradient", "fisher", "taylor", "obd")


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
        output = functional_call(
            model,
            weights,
            (),
            {"input_features": features[None], "decoder_input_ids": inputs[None], "use_cache": False},
        )
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
            yield (
                loss.item(),
                {name: p.grad if p.grad is not None else torch.zeros_like(p) for name, p in params.items()},
            )
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


def measure_gradients(model: nn.Module, examples: list[Example], sizes: list[int] | None = None,
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
        raise ValueError("measure_gradients(..., keep_per_weight=True) is needed for per-weight importance")
    params = _distinct_parameters(model)
    with torch.no_grad():
        if method == "taylor":
            return {name: (measurement.mean_grad[name] * p).abs() for name, p in params.items()}
        if method == "obd":
            return {name: 0.5 * measurement.fisher_diag[name] * p.square() for name, p in params.items()}
    raise ValueError(f"per-weight importance is 'taylor' or 'obd', got {method!r}")
