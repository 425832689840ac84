"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning that updates the kept weights to reconstruct each layer.

For one linear layer with weight W (rows: outputs, columns: inputs) and calibration inputs X,
the layer's output error ||W X - W' X||^2 is a quadratic in each row with Hessian H = X X^T.
Optimal Brain Surgeon removes one weight w_q of a row and moves the others by
``-w_q / [H^-1]_qq * H^-1[:, q]``, which is exact for that quadratic. SparseGPT removes the
columns in order, so that row after row shares one sequence of inverse Hessians: after column
i is decided, only columns i+1.. stay free, and the inverse over those is read off the upper
Cholesky factor U of H^-1 (row i of U, scaled by 1 / U_ii, is the OBS update; U_ii^2 is the
diagonal entry that enters the saliency ``w^2 / U_ii^2``). Which weights go is chosen every
`mask_block` columns from the current, already updated weights (adaptive mask selection); the
updates are applied lazily one `blocksize` block of columns at a time. Defaults are the
paper's: dampening 1 % of the mean diagonal, blocks of 128 columns, a mask per block.

Unlike the reference code we do not zero the weights of input channels that never fire (they
would exceed the requested sparsity); such a channel only gets a unit diagonal so that H stays
invertible. Each matrix loses exactly round(sparsity x numel) weights.
"""
from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelib import results
from prunelib.calibration import Example
from prunelib.components import list_components
from prunelib.models import tensors_digest, weights_fingerprint
from prunelib.pruning import compute_masks

log = logging.getLogger(__name__)

BLOCKSIZE = 128  # columns updated together (lazy batch updates)
PERCDAMP = 0.01  # dampening: this fraction of the mean diagonal of H is added to it


def output_error(weight: torch.Tensor, pruned_weight: torch.Tensor, hessian: torch.Tensor) -> float:
    """||W X - W' X||^2 per calibration token, read from the Hessian H = X X^T / tokens: tr(D H D^T), D = W - W'."""
    difference = (weight - pruned_weight).to(hessian.dtype)
    return float(((difference @ hessian) * difference).sum())


def _check_hessian(hessian: torch.Tensor, columns: int) -> None:
    if hessian.shape != (columns, columns):
        raise ValueError(f"Hessian has shape {tuple(hessian.shape)}, expected ({columns}, {columns})")
    if not torch.isfinite(hessian).all():
        raise ValueError("Hessian has non-finite entries (inputs overflowed?)")


def inverse_cholesky(hessian: torch.Tensor, percdamp: float = PERCDAMP) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp I)^-1, U^T U = (H + damp I)^-1; dead inputs get a unit diagonal."""
    h = hessian.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    damp = percdamp * torch.diagonal(h).mean()
    h.diagonal().add_(damp)
    # With J the reversal permutation, J H J = L L^T gives H^-1 = (J L^-1 J)^T (J L^-1 J), and
    # J L^-1 J is upper triangular with a positive diagonal: the factor wanted, from one Cholesky
    # and one triangular solve (inverting H and factorising again costs several times more).
    try:
        lower = torch.linalg.cholesky(h.flip(0, 1))
    except torch.linalg.LinAlgError as err:
        raise ValueError(f"the dampened Hessian is not positive definite (percdamp {percdamp}); "
                         "raise percdamp or add calibration data") from err
    identity = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    return torch.linalg.solve_triangular(lower, identity, upper=False).flip(0, 1)


def _block_counts(k: int, columns: int, block: int) -> list[int]:
    """Weights to remove in each block of `block` columns, proportional to its width, summing to exactly k."""
    ends = list(range(block, columns, block)) + [columns]
    starts = [0, *ends[:-1]]
    return [round(k * end / columns) - round(k * start / columns) for start, end in zip(starts, ends, strict=True)]


@torch.no_grad()
def prune_matrix(weight: torch.Tensor, hessian: torch.Tensor, k: int, blocksize: int = BLOCKSIZE,
                 percdamp: float = PERCDAMP, mask_block: int | None = None,
                 dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one matrix: (new weight with exactly k zeros chosen, boolean mask of those k).

    `hessian` is X X^T over the calibration inputs (any positive scale: dampening is relative).
    `mask_block` (default `blocksize`) must divide `blocksize`; the k removals are spread over
    the mask blocks in proportion to their width. Computed in `dtype`, returned in the weight's.
    """
    rows, columns = weight.shape
    mask_block = mask_block or blocksize
    if blocksize < 1 or mask_block < 1 or blocksize % mask_block:
        raise ValueError(f"mask_block ({mask_block}) must divide blocksize ({blocksize})")
    if not 0 <= k <= weight.numel():
        raise ValueError(f"cannot remove {k} of {weight.numel()} weights")
    _check_hessian(hessian, columns)
    w = weight.detach().to(dtype).clone()
    u = inverse_cholesky(hessian.to(device=w.device, dtype=dtype), percdamp)
    drop = torch.zeros(rows, columns, dtype=torch.bool, device=w.device)
    counts = iter(_block_counts(k, columns, mask_block))
    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        w1, u1 = w[:, start:end].clone(), u[start:end, start:end]
        errors = torch.zeros_like(w1)
        for i in range(end - start):
            if i % mask_block == 0:  # choose this mask block's removals from the weights as updated so far
                width = min(mask_block, end - start - i)
                saliency = w1[:, i:i + width].square() / torch.diagonal(u1)[i:i + width].square()
                chosen = torch.argsort(saliency.reshape(-1), stable=True)[:next(counts)]
                block_drop = torch.zeros(saliency.numel(), dtype=torch.bool, device=w.device)
                block_drop[chosen] = True
                drop[:, start + i:start + i + width] = block_drop.reshape(saliency.shape)
            column = w1[:, i]
            kept = torch.where(drop[:, start + i], torch.zeros_like(column), column)
            error = (column - kept) / u1[i, i]
            w1[:, i:] -= error[:, None] * u1[i, i:][None, :]
            w1[:, i] = kept
            errors[:, i] = error
        w[:, start:end] = w1
        w[:, end:] -= errors @ u[start:end, end:]
    return w.to(weight.dtype), drop


# ---- the whole model, block by block ---------------------------------------------------------


class _Stop(Exception):
    """Raised by a hook once the block being calibrated has run: the rest of the forward is not needed."""


def _hessian_hooks(modules: Mapping[str, nn.Linear], hessians: dict[str, torch.Tensor],
                   tokens: dict[str, int]) -> list:
    """Forward pre-hooks adding X X^T of each module's input (every token a column) to `hessians`.

    q, k and v projections are called one after another on the same input tensor: its X X^T is
    computed once and added to each of their Hessians.
    """
    last: list = [None, None]  # the input tensor seen last, and its X X^T

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            if inputs[0] is not last[0]:
                x = inputs[0].detach().reshape(-1, module.in_features).double()
                last[0], last[1] = inputs[0], (x.T @ x, x.shape[0])
            product, count = last[1]
            hessians[name] += product
            tokens[name] += count
        return hook
    return [module.register_forward_pre_hook(hook_for(name)) for name, module in modules.items()]


def _stop_after(block: nn.Module):
    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        raise _Stop
    return block.register_forward_hook(hook)


@dataclass(frozen=True)
class SparseGPTResult:
    """New weights of every pruned matrix, the masks SparseGPT chose, and what the run cost."""

    weights: dict[str, torch.Tensor]  # parameter name -> pruned and updated weight
    masks: dict[str, torch.Tensor]  # parameter name -> True where the weight was removed
    seconds: float
    n_examples: int
    hessians: dict[str, torch.Tensor] | None = None  # X X^T / tokens per matrix, when asked for (keep_hessians)

    def keep_scores(self) -> dict[str, torch.Tensor]:
        """Scores for `pruned(..., importance=)` whose k lowest are exactly SparseGPT's removals."""
        return {name: (~mask).float() for name, mask in self.masks.items()}

    def digest(self) -> str:
        """A short hash of the new weights, naming them in cache keys."""
        return tensors_digest(self.weights)


def _blocks(model: nn.Module) -> list[tuple[str, int, dict[str, str]]]:
    """(stack, layer, {weight name: module name}) of every layer holding prunable linear weights, in model order."""
    blocks: dict[tuple[str, int], dict[str, str]] = {}
    for info in list_components(model):
        if info.prunable:
            blocks.setdefault((info.stack, info.layer), {})[info.name] = info.name.rsplit(".", 1)[0]
    encoder = [key for key in blocks if key[0] == "encoder"]
    decoder = [key for key in blocks if key[0] == "decoder"]
    return [(stack, layer, blocks[(stack, layer)]) for stack, layer in [*encoder, *decoder]]


def _run_to(model: nn.Module, stack: str, layer: int, examples: Sequence[Example],
            encoder_states: list[torch.Tensor] | None) -> None:
    """Forward every example until layer `layer` of `stack` has run (the hooks collect what they need)."""
    whisper = model.model
    block = (whisper.encoder if stack == "encoder" else whisper.decoder).layers[layer]
    handle = _stop_after(block)
    try:
        for index, example in enumerate(examples):
            try:
                if stack == "encoder":
                    whisper.encoder(example.input_features[None])
                else:
                    whisper.decoder(input_ids=example.decoder_input_ids[None],
                                    encoder_hidden_states=encoder_states[index], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()


@torch.no_grad()
def sparsegpt(model: nn.Module, spec: str, examples: Sequence[Example], blocksize: int = BLOCKSIZE,
              percdamp: float = PERCDAMP, mask_block: int | None = None, progress: bool = True,
              keep_hessians: bool = False) -> SparseGPTResult:
    """SparseGPT on every prunable linear matrix, each losing as many weights as `spec` would take by magnitude.

    `spec` carries the allocation (``global:local=0.4`` for uniform, an OWL or empirical spec
    otherwise): its magnitude masks only fix the count per matrix; SparseGPT picks which weights
    and updates the rest. Layers are processed in model order (encoder, then decoder), each from
    inputs that the already pruned layers before it produce, as in the paper. The model is
    restored bit-exactly before returning; apply the result with `pruned(..., weights=)`.
    Selected tensors that are not linear layer weights (the token embedding) are refused.
    Memory: one layer's Hessians at a time (whisper-base's fc2: 2048 x 2048), unless
    `keep_hessians` keeps every one for inspection.
    """
    if not examples:
        raise ValueError("SparseGPT needs calibration examples")
    started = time.perf_counter()
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    counts = {name: int((~keep).sum()) for name, keep in compute_masks(model, spec).items()}
    linear = {info.name for info in list_components(model) if info.prunable}
    other = sorted(name for name, k in counts.items() if k and name not in linear)
    if other:
        raise ValueError(f"SparseGPT prunes linear layer weights only; {spec!r} also selects {other[:3]}")
    original = {name: params[name].detach().clone() for name in counts}
    weights, masks, kept_hessians = {}, {}, {}
    was_training = model.training
    model.eval()
    try:
        encoder_states = None
        blocks = [block for block in _blocks(model) if any(counts.get(name) for name in block[2])]
        for stack, layer, names in tqdm(blocks, desc="SparseGPT", unit="layer", disable=not progress):
            names = {name: module for name, module in names.items() if counts.get(name)}
            if stack == "decoder" and encoder_states is None:  # the encoder is final now: run it once
                encoder_states = [model.model.encoder(e.input_features[None]).last_hidden_state for e in examples]
            hessians = {n: torch.zeros(modules[m].in_features, modules[m].in_features, dtype=torch.float64,
                                       device=params[n].device) for n, m in names.items()}
            tokens = dict.fromkeys(names, 0)
            handles = _hessian_hooks({n: modules[m] for n, m in names.items()}, hessians, tokens)
            try:
                _run_to(model, stack, layer, examples, encoder_states)
            finally:
                for handle in handles:
                    handle.remove()
            for name in names:
                hessian = hessians.pop(name) / max(tokens[name], 1)
                new, drop = prune_matrix(params[name], hessian, counts[name], blocksize, percdamp, mask_block)
                if keep_hessians:
                    kept_hessians[name] = hessian
                params[name].data.copy_(new)  # later layers see this layer pruned
                weights[name], masks[name] = new, drop
            log.info("SparseGPT %s.layers[%d]: %d matrices", stack, layer, len(names))
    finally:
        for name, value in original.items():
            params[name].data.copy_(value)
        model.train(was_training)
    for name in counts:  # selected but allotted no removal: kept whole, so that keep_scores covers the spec
        masks.setdefault(name, torch.zeros_like(params[name], dtype=torch.bool))
    return SparseGPTResult(weights, masks, time.perf_counter() - started, len(examples),
                           kept_hessians if keep_hessians else None)


# ---- a cache, so that an interrupted sweep does not calibrate again ------------------------------

CACHE_VERSION = 1  # bump when sparsegpt() would give other weights for the same inputs


def examples_digest(examples: Sequence[Example]) -> str:
    """A short hash of the calibration examples: ids, features, decoder inputs and labels, in order."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.id.encode())
        for tensor in (example.input_features, example.decoder_input_ids, example.labels):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _load_result(path: Path, key: str, device: torch.device) -> SparseGPTResult:
    """A result that `cached_sparsegpt` saved; a file it cannot trust raises ValueError naming it."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated or foreign files fail in pickle, zipfile or torch itself
        raise ValueError(f"{path}: unreadable SparseGPT cache file ({exc}); delete it to calibrate again") from exc
    trusted = isinstance(saved, dict) and saved.get("key") == key
    if not trusted or not set(saved.get("weights", {})) <= set(saved.get("masks", {})):
        raise ValueError(f"{path}: not the SparseGPT result this cache key names; delete it to calibrate again")
    return SparseGPTResult(saved["weights"], saved["masks"], float(saved["seconds"]), int(saved["n_examples"]))


def cached_sparsegpt(model: nn.Module, spec: str, examples: Sequence[Example], cache_dir: str | Path | None,
                     blocksize: int = BLOCKSIZE, percdamp: float = PERCDAMP, mask_block: int | None = None,
                     progress: bool = True) -> SparseGPTResult:
    """`sparsegpt`'s result, read from `cache_dir` (<key>.pt) when an identical calibration was done before.

    The key covers the model's weights, `spec`, the examples, the settings, torch's version and
    the device type, so the file read back holds the weights a fresh run computes on this machine.
    A calibration takes minutes per allocation on a CPU; without the cache an interrupted sweep
    would redo all of them before it could reuse one cached evaluation. `cache_dir` None: no
    cache. A file holds the new weights and the masks of every pruned matrix, 5 bytes per weight
    (whisper-base: up to 0.22 GB per allocation, 3.3 GB for notebook 04's 18, measured). `seconds` is the cost of
    the calibration that wrote it.
    """
    options = {"blocksize": blocksize, "percdamp": percdamp, "mask_block": mask_block}
    if cache_dir is None:
        return sparsegpt(model, spec, examples, progress=progress, **options)
    device = next(model.parameters()).device
    key = results.cache_key(kind="sparsegpt", version=CACHE_VERSION, weights=weights_fingerprint(model), spec=spec,
                            examples=examples_digest(examples), torch=torch.__version__, device=device.type, **options)
    path = Path(cache_dir) / f"{key}.pt"
    if path.exists():
        log.info("SparseGPT %s: read from %s", spec, path)
        return _load_result(path, key, device)
    result = sparsegpt(model, spec, examples, progress=progress, **options)
    buffer = io.BytesIO()
    torch.save({"key": key, "weights": result.weights, "masks": result.masks, "seconds": result.seconds,
                "n_examples": result.n_examples}, buffer)
    results.write_bytes_atomic(path, buffer.getvalue())
    return result
