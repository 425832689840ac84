"""Keep encoder outputs in memory under a key naming the encoder's weights, so repeats skip the encoder."""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import torch

BUDGET_ENV = "PRUNELIB_ENCODER_CACHE_GB"
CROSS_BUDGET_ENV = "PRUNELIB_CROSS_KV_CACHE_GB"  # decoder cross-attention keys and values: 37 MB an utterance (base)


class EncoderCache:
    """Encoder hidden states per (encoder key, utterance name), bounded in bytes.

    Whisper's encoder always reads 30 s of padded audio and costs most of the compute of a
    short utterance; every evaluation whose encoder weights are the same (a prune that leaves
    the encoder untouched, or the same prune under another decoding pipeline) gets the same
    hidden states, so they are computed once. When the budget is full the least recently
    used go first. The key is the caller's (see evaluate.encoder_key), and so is the name
    (transcribe.cache_name: id and audio fingerprint), which must mean one utterance's audio.
    """

    def __init__(self, max_bytes: int | None = None, evict: bool = True, budget_env: str = BUDGET_ENV) -> None:
        if max_bytes is None:
            value = os.environ.get(budget_env, "2")
            try:
                max_bytes = int(float(value) * 2**30)
            except ValueError:
                raise ValueError(f"{budget_env} must be a number of GiB (0: off), got {value!r}") from None
        self.max_bytes = max_bytes
        # Without eviction a full cache keeps what it has: a sweep that reads every utterance in the
        # same order then hits on those, where LRU would evict each one just before it is needed.
        self.evict = evict
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._store: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def get(self, fingerprint: str, utterance_id: str) -> torch.Tensor | None:
        """The cached hidden states of one utterance, or None."""
        key = (fingerprint, utterance_id)
        hidden = self._store.get(key)
        if hidden is None:
            self.misses += 1
            return None
        self._store.move_to_end(key)
        self.hits += 1
        return hidden

    def holds(self, fingerprint: str, utterance_id: str) -> bool:
        """Whether one utterance's hidden states are cached (neither a hit nor a miss, nor a use)."""
        return (fingerprint, utterance_id) in self._store

    def put(self, fingerprint: str, utterance_id: str, hidden: torch.Tensor) -> None:
        """Store one utterance's hidden states ([positions, d_model]), evicting old ones if needed."""
        size = hidden.numel() * hidden.element_size()
        if size > self.max_bytes:
            return
        key = (fingerprint, utterance_id)
        if key in self._store:
            return
        if not self.evict and self.bytes + size > self.max_bytes:
            return
        while self.bytes + size > self.max_bytes:
            _, old = self._store.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
        # clone: a row view would keep the whole batch tensor alive
        self._store[key] = hidden.detach().clone()
        self.bytes += size

    def clear(self) -> None:
        """Forget everything."""
        self._store.clear()
        self.bytes = 0


@dataclass(frozen=True)
class EncoderReuse:
    """What of the encoder's work one evaluation may take from the cache, and under which keys.

    `key` names the encoder's weights under the prune (its full outputs are shared by every
    evaluation with the same encoder). A prune that leaves the convolutional front-end and the
    first `prefix_layers` encoder layers dense also shares their output, the input of layer
    `prefix_layers`, with every other such prune: it is stored under `prefix_key`, which must
    name those dense weights, and only the later layers run again.
    """

    cache: EncoderCache
    key: str
    prefix_layers: int = 0
    prefix_key: str | None = None
    cross_cache: EncoderCache | None = None  # the decoder's cross-attention keys and values, per utterance
    cross_key: str | None = None  # names the encoder outputs and the cross-attention k/v weights; None: no reuse

    def __post_init__(self) -> None:
        if self.prefix_layers < 0:
            raise ValueError(f"prefix_layers must be at least 0, got {self.prefix_layers}")
        if self.prefix_layers > 0 and not self.prefix_key:
            raise ValueError("a dense encoder prefix needs a prefix_key naming its weights")
