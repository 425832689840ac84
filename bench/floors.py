"""What this machine can do at best for Whisper's encoder and decoder: matmul roofline, read bandwidth, their floors.

One job: measure, in the same run as the benchmark, the ceilings its ratios are read against:
  - fp32 matmul throughput at the shapes of Whisper's encoder linears (the roofline);
  - the encoder's arithmetic (GFLOP per 30 s window, counted from the config) and so its GFLOP/s;
  - memory read bandwidth (a large tensor summed);
  - one greedy decoding step's time and its memory floor: the bytes a step must read (the
    decoder's weights once, every row's cross-attention keys and values over all encoder
    frames) at the measured bandwidth.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.nn import functional as F  # noqa: N812
from transformers.modeling_outputs import BaseModelOutput

from prunelib.models import LoadedModel


def best_seconds(run: Callable[[], object], repeats: int, device: str) -> float:
    """The fastest of `repeats` timed calls after one warm-up (the least disturbed by other work)."""
    run()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def encoder_shapes(loaded: LoadedModel, batch_size: int) -> dict[str, tuple[int, int, int]]:
    """(rows, in, out) of the encoder's linear layers for one batch of 30 s windows."""
    config = loaded.model.config
    rows = batch_size * config.max_source_positions
    d, ff = config.d_model, config.encoder_ffn_dim
    return {"q/k/v/out projection": (rows, d, d), "FFN fc1": (rows, d, ff), "FFN fc2": (rows, ff, d)}


def matmul_roofline(loaded: LoadedModel, batch_size: int, device: str, repeats: int = 3) -> dict[str, float]:
    """fp32 GFLOP/s of F.linear at each encoder shape (random data; the best of `repeats`)."""
    generator = torch.Generator().manual_seed(0)
    rates = {}
    for name, (rows, n_in, n_out) in encoder_shapes(loaded, batch_size).items():
        x = torch.randn(rows, n_in, generator=generator).to(device)
        w = torch.randn(n_out, n_in, generator=generator).to(device)
        with torch.inference_mode():
            seconds = best_seconds(lambda x=x, w=w: F.linear(x, w), repeats, device)
        rates[name] = 2 * rows * n_in * n_out / seconds / 1e9
    return rates


def encoder_gflop(loaded: LoadedModel) -> float:
    """Arithmetic of one 30 s window through the encoder (multiply-adds as 2 FLOPs; norms and GELU left out)."""
    config = loaded.model.config
    frames, d, ff = config.max_source_positions, config.d_model, config.encoder_ffn_dim
    mel_frames = 2 * frames
    convs = 2 * mel_frames * config.num_mel_bins * 3 * d + 2 * frames * d * 3 * d
    per_layer = 4 * 2 * frames * d * d + 2 * 2 * frames * frames * d + 2 * 2 * frames * d * ff
    return (convs + config.encoder_layers * per_layer) / 1e9


def read_bandwidth(device: str, megabytes: int = 512, repeats: int = 5) -> float:
    """GB/s at which this machine reads a tensor far larger than its caches (a sum over it)."""
    data = torch.ones(megabytes * 2**20 // 4, device=device)
    seconds = best_seconds(lambda: data.sum(), repeats, device)
    return data.numel() * 4 / seconds / 1e9


def decoder_step_bytes(loaded: LoadedModel, batch_size: int) -> dict[str, float]:
    """Bytes a greedy decoding step must read at least: decoder weights once, cross-attention K/V of every row."""
    decoder = loaded.model.get_decoder()
    # The token embedding is read whole once a step as the (tied) output projection; the lookup reads a row.
    weights = sum(p.numel() * p.element_size() for p in decoder.parameters())
    config = loaded.model.config
    element = next(decoder.parameters()).element_size()
    cross = config.decoder_layers * 2 * config.max_source_positions * config.d_model * element
    return {"weights": weights, "cross_attention_kv_per_row": cross, "total": weights + batch_size * cross}


def decoder_step_seconds(loaded: LoadedModel, hidden: torch.Tensor, generate: dict, short: int = 8,
                         long: int = 40, repeats: int = 2) -> float:
    """Seconds per greedy step for the batch `hidden` (encoder outputs): two forced lengths, differenced.

    The end token is forbidden until `long` tokens so every row runs every step; the difference
    removes the prompt and the first step (which computes the cross-attention keys and values).
    """
    device = str(hidden.device)
    encoded = BaseModelOutput(last_hidden_state=hidden)

    def run(tokens: int) -> Callable[[], object]:
        return lambda: loaded.model.generate(encoder_outputs=encoded, min_new_tokens=tokens, max_new_tokens=tokens,
                                             **generate)

    with torch.inference_mode():
        seconds_short = best_seconds(run(short), repeats, device)
        seconds_long = best_seconds(run(long), repeats, device)
    return (seconds_long - seconds_short) / (long - short)
