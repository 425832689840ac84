"""Batched greedy Whisper transcription under the standard or the paper's decoding pipeline."""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import transformers
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.modeling_outputs import BaseModelOutput

from prunelib.audio import SAMPLE_RATE, WINDOW_SECONDS, AudioError
from prunelib.corpora import Utterance
from prunelib.encoder_cache import EncoderReuse
from prunelib.models import LoadedModel

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 440  # Whisper's 448 positions less the longest decoder prompt


@dataclass(frozen=True)
class Decoding:
    """How to decode: which pipeline, batch size, beams, and what to do past 30 s."""

    language: str = "en"  # "en" forces English + transcribe (standard); "auto" forces nothing (the paper's)
    batch_size: int = 16  # utterances decoded together (the paper's batch size)
    encoder_batch_size: int = 16  # the encoder runs on at most this many at once: compute-bound, larger gains nothing
    num_beams: int = 1  # greedy, as the paper
    long_form: bool = True  # decode >30 s audio sequentially; False truncates at 30 s as the paper's code did
    max_tokens_per_second: float | None = (
        10.0  # stop each utterance at this many tokens per second of its audio; None: 448
    )

    def __post_init__(self) -> None:
        if not self.language or not isinstance(self.language, str):
            raise ValueError(f"language must be 'auto' or a language code such as 'en', got {self.language!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.encoder_batch_size < 1:
            raise ValueError(f"encoder_batch_size must be at least 1, got {self.encoder_batch_size}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {self.num_beams}")
        if self.max_tokens_per_second is not None and self.max_tokens_per_second <= 0:
            raise ValueError(f"max_tokens_per_second must be positive or None, got {self.max_tokens_per_second}")

    def token_budget(self, seconds: float) -> int | None:
        """New tokens allowed for a short-form utterance whose audio lasts `seconds`.

        Read speech runs at 3 to 5 tokens a second; a budget of 10 never cuts a real
        transcript but stops the 448-token repetition loops of a collapsed (heavily pruned)
        model, which otherwise make one evaluation many times slower.
        """
        if self.max_tokens_per_second is None:
            return None
        return min(MAX_NEW_TOKENS, int(math.ceil(self.max_tokens_per_second * seconds)) + 10)

    def key(self) -> dict:
        """The settings that change transcripts.

        Batch sizes are left out: every utterance stops at its own token budget and the encoder
        input is always padded to 30 s, so a transcript does not depend on its batch-mates.
        """
        settings = asdict(self)
        settings.pop("batch_size")
        settings.pop("encoder_batch_size")
        return settings


def check_language(loaded: LoadedModel, language: str) -> None:
    """Refuse a language the checkpoint cannot be told to decode in (any for English-only models but en)."""
    if language == "auto":
        return
    if not loaded.is_multilingual:
        if language != "en":
            raise ValueError(f"{loaded.name} is English-only: it cannot decode language {language!r}; use en or auto")
        return
    known = sorted(token.strip("<|>") for token in loaded.model.generation_config.lang_to_id)
    if language not in known:
        raise ValueError(f"{loaded.name} knows no language {language!r}; use auto or a code such as "
                         f"{', '.join(known[:8])} ... ({len(known)} in all)")


def generate_kwargs(loaded: LoadedModel, decoding: Decoding) -> dict:
    """Keyword arguments for `model.generate` that implement `decoding` on this checkpoint."""
    generation_config = copy.deepcopy(loaded.model.generation_config)
    # The paper sets forced_decoder_ids = None so nothing is forced; clearing it on a copy
    # keeps the loaded model's own config untouched.
    generation_config.forced_decoder_ids = None
    kwargs: dict = {"generation_config": generation_config, "num_beams": decoding.num_beams, "do_sample": False}
    check_language(loaded, decoding.language)
    if loaded.is_multilingual and decoding.language != "auto":
        kwargs["language"] = decoding.language
        kwargs["task"] = "transcribe"
    # English-only checkpoints have no language or task tokens: both pipelines coincide there.
    return kwargs


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' per-call generation notices for the duration of a transcription."""
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(previous)


def _encoder_with_prefix(encoder: torch.nn.Module, features: torch.Tensor,
                         prefix_layers: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The encoder's output, and its hidden states entering layer `prefix_layers` (None when 0)."""
    if prefix_layers == 0:
        return encoder(features).last_hidden_state, None
    captured = {}

    def capture(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]

    # A hook on the encoder's own forward, so the captured states are exactly those it computes.
    handle = encoder.layers[prefix_layers].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        hidden = encoder(features).last_hidden_state
    finally:
        handle.remove()
    return hidden, captured["hidden"]


def _encoder_from_layer(encoder: torch.nn.Module, hidden: torch.Tensor, start: int) -> torch.Tensor:
    """The encoder's output from the hidden states entering layer `start`, as its own forward goes on."""
    for layer in encoder.layers[start:]:
        hidden = layer(hidden, None, layer_head_mask=None, output_attentions=False)[0]
    return encoder.layer_norm(hidden)


def cache_name(utt: Utterance) -> str:
    """An utterance's name in the in-memory encoder caches: its id and its audio's fingerprint.

    The id alone is not enough: two corpora (or an edited file) can hold other audio under the
    same id, and its encoder states must not be served for it.
    """
    return f"{utt.id}:{utt.audio_fingerprint()}"


def encoder_outputs(loaded: LoadedModel, ids: list[str], features: torch.Tensor,
                    reuse: EncoderReuse | None = None) -> torch.Tensor:
    """Encoder hidden states for a batch of utterances, reusing what `reuse` allows.

    `ids` name the utterances in the cache (`cache_name`: the same name must mean the same audio).
    In order: the full outputs from the cache; else the cached states after the dense prefix,
    through the remaining layers only; else the whole encoder, storing both for next time. A
    batch is served from the cache only when every utterance in it is, so the rows are always
    computed in the same batches (the sort by length fixes them for a corpus).
    """
    encoder = loaded.model.get_encoder()
    if reuse is None:
        return encoder(features).last_hidden_state
    cache = reuse.cache
    cached = [cache.get(reuse.key, utt_id) for utt_id in ids]
    if all(hidden is not None for hidden in cached):
        return torch.stack(cached)
    prefix_layers = reuse.prefix_layers if reuse.prefix_layers < len(encoder.layers) else 0
    prefixes = [cache.get(reuse.prefix_key, utt_id) for utt_id in ids] if prefix_layers else []
    if prefixes and all(prefix is not None for prefix in prefixes):
        hidden = _encoder_from_layer(encoder, torch.stack(prefixes), prefix_layers)
    else:
        hidden, prefix = _encoder_with_prefix(encoder, features, prefix_layers)
        if prefix is not None:
            for utt_id, row in zip(ids, prefix, strict=True):
                cache.put(reuse.prefix_key, utt_id, row)
    for utt_id, row in zip(ids, hidden, strict=True):
        cache.put(reuse.key, utt_id, row)
    return hidden


def _cross_attention_kv(loaded: LoadedModel, hidden: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every decoder layer's cross-attention keys and values of `hidden`, computed as its attention does."""
    rows = hidden.shape[0]
    states = []
    for layer in loaded.model.get_decoder().layers:
        attention = layer.encoder_attn
        shape = (rows, -1, attention.num_heads, attention.head_dim)
        states.append((attention.k_proj(hidden).view(shape).transpose(1, 2).contiguous(),
                       attention.v_proj(hidden).view(shape).transpose(1, 2).contiguous()))
    return states


def cross_attention_cache(loaded: LoadedModel, ids: list[str], hidden: torch.Tensor,
                          reuse: EncoderReuse | None) -> EncoderDecoderCache | None:
    """A generation cache holding the batch's cross-attention keys and values, reused where `reuse` allows.

    They depend only on the encoder outputs and the cross-attention key/value weights, and cost
    as much arithmetic as the rest of a short transcript's decoding; every configuration that
    leaves both alike shares them. None when `reuse` names no key for them (generate computes them).
    """
    if reuse is None or reuse.cross_cache is None or reuse.cross_key is None:
        return None
    cache = reuse.cross_cache
    stored = [cache.get(reuse.cross_key, utt_id) for utt_id in ids]
    if all(row is not None for row in stored):
        states = [(torch.stack([row[layer, 0] for row in stored]), torch.stack([row[layer, 1] for row in stored]))
                  for layer in range(stored[0].shape[0])]
    else:
        states = _cross_attention_kv(loaded, hidden)
        for index, utt_id in enumerate(ids):
            cache.put(reuse.cross_key, utt_id, torch.stack([torch.stack([k[index], v[index]]) for k, v in states]))
    cross = DynamicCache()
    for layer, (keys, values) in enumerate(states):
        cross.update(keys, values, layer)
    return EncoderDecoderCache(DynamicCache(), cross)


class PerRowTokenBudget(StoppingCriteria):
    """Stop each row of a batch once it has produced its own number of new tokens.

    `generate`'s own `max_new_tokens` is one number for the whole batch; with it, a short
    utterance batched with a long one would get the long one's budget, and a collapsed model's
    repetition loop would be cut at a length that depends on its batch-mates.
    """

    def __init__(self, budgets: list[int]) -> None:
        self.budgets = torch.tensor(budgets)
        self.prompt_length: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        # The first call comes after the first new token: the prompt is everything before it.
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1] - 1
        produced = input_ids.shape[1] - self.prompt_length
        # Beam search asks about every beam of every utterance: rows come utterance by utterance.
        budgets = self.budgets.repeat_interleave(input_ids.shape[0] // len(self.budgets))
        return (produced >= budgets).to(input_ids.device)


def _content_tokens(sequence: torch.Tensor, pad_id: int | None) -> int:
    """Tokens the decoder produced, padding excluded (generate strips the prompt and the end token)."""
    return int((sequence != pad_id).sum()) if pad_id is not None else int(sequence.numel())


def _languages(loaded: LoadedModel, kwargs: dict, count: int, **inputs) -> list[str | None]:
    """The language each utterance is decoded in: forced, detected (as generate will), or English."""
    if "language" in kwargs:
        return [kwargs["language"]] * count
    if not loaded.is_multilingual:
        return ["en"] * count
    lang_to_id = loaded.model.generation_config.lang_to_id
    names = {token: name.strip("<|>") for name, token in lang_to_id.items()}
    detected = loaded.model.detect_language(generation_config=kwargs["generation_config"], **inputs)
    return [names.get(int(token)) for token in detected.reshape(-1)]


def _decode_short(loaded: LoadedModel, ids: list[str], arrays: list[np.ndarray], decoding: Decoding, kwargs: dict,
                  device: torch.device, encoder_reuse: EncoderReuse | None
                  ) -> tuple[torch.Tensor, list, int | None]:
    """Decode up to 30 s per utterance (greedy, or beam search); the encoder runs once (or not at all, when cached)."""
    features = loaded.processor.feature_extractor(arrays, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    features = features.input_features.to(device, dtype=loaded.model.dtype)
    # The decoder's weight reads are shared by every row of its batch; the encoder gains nothing past
    # its own batch size, so it runs in chunks (the same chunks whatever the decoder batch, if a multiple).
    step = decoding.encoder_batch_size
    hidden = torch.cat([encoder_outputs(loaded, ids[i:i + step], features[i:i + step], encoder_reuse)
                        for i in range(0, len(ids), step)])
    encoded = BaseModelOutput(last_hidden_state=hidden)
    languages = _languages(loaded, kwargs, len(arrays), encoder_outputs=encoded)
    budgets = [decoding.token_budget(len(audio) / SAMPLE_RATE) for audio in arrays]
    extra = {}
    # Beam search decodes several rows per utterance, which a cache built per utterance does not have.
    cross = cross_attention_cache(loaded, ids, hidden, encoder_reuse) if decoding.num_beams == 1 else None
    if cross is not None:
        extra["past_key_values"] = cross
    if budgets[0] is not None:
        extra |= {
            "max_new_tokens": max(budgets),
            "stopping_criteria": StoppingCriteriaList([PerRowTokenBudget(budgets)]),
        }
    sequences = loaded.model.generate(encoder_outputs=encoded, **kwargs, **extra)
    return sequences, languages, budgets


def _decode_long(loaded: LoadedModel, arrays: list[np.ndarray], kwargs: dict,
                 device: torch.device) -> tuple[torch.Tensor, list, list[None]]:
    """Decode audio over 30 s sequentially in 30 s windows, as the ASR pipeline does."""
    features = loaded.processor.feature_extractor(
        arrays, sampling_rate=SAMPLE_RATE, return_tensors="pt",
        truncation=False, padding="longest", return_attention_mask=True,
    )
    input_features = features.input_features.to(device, dtype=loaded.model.dtype)
    frames = int(WINDOW_SECONDS * SAMPLE_RATE) // loaded.processor.feature_extractor.hop_length
    languages = _languages(loaded, kwargs, len(arrays), input_features=input_features[..., :frames])
    output = loaded.model.generate(input_features, attention_mask=features.attention_mask.to(device),
                                   return_timestamps=True, **kwargs)
    sequences = output["sequences"] if isinstance(output, dict) else output
    return sequences, languages, [None] * len(arrays)


def _load_all(utterances: Iterable[Utterance]) -> tuple[list[tuple[Utterance, np.ndarray]], list[dict]]:
    """Read every utterance's audio; unreadable ones become error records instead of failures."""
    loaded, failed = [], []
    for utt in utterances:
        try:
            loaded.append((utt, utt.load_audio()))
        except AudioError as err:
            log.warning("skipping %s: %s", utt.id, err)
            failed.append(
                {"id": utt.id, "reference": utt.reference, "hypothesis": "", "speaker": utt.speaker,
                 "seconds": 0.0, "decode_seconds": 0.0, "error": str(err)}
            )
    return loaded, failed


def transcribe(
    loaded: LoadedModel,
    utterances: list[Utterance],
    decoding: Decoding = Decoding(),
    progress: bool = True,
    on_batch: Callable[[list[dict]], None] | None = None,
    encoder_reuse: EncoderReuse | None = None,
) -> list[dict]:
    """Transcribe utterances; one record per utterance (see prunelib.scoring for the keys).

    Utterances are sorted by length so batches pad little; audio over 30 s is decoded
    long-form one utterance at a time (or truncated when `decoding.long_form` is False).
    With `encoder_reuse`, encoder outputs (and the states after a dense encoder prefix) are
    stored in its cache and reused under its keys, which must name the weights they come from.
    """
    model, processor = loaded.model, loaded.processor
    kwargs = generate_kwargs(loaded, decoding)
    pad_id = model.generation_config.pad_token_id
    audio_items, records = _load_all(utterances)
    if on_batch is not None and records:
        on_batch(list(records))
    audio_items.sort(key=lambda item: len(item[1]), reverse=True)
    limit = int(WINDOW_SECONDS * SAMPLE_RATE)
    long_items = [item for item in audio_items if len(item[1]) > limit and decoding.long_form]
    short_items = [item for item in audio_items if not (len(item[1]) > limit and decoding.long_form)]
    batches = [long_items[i : i + 1] for i in range(len(long_items))]
    batches += [short_items[i : i + decoding.batch_size] for i in range(0, len(short_items), decoding.batch_size)]
    device = next(model.parameters()).device

    bar = tqdm(total=len(audio_items), desc=f"transcribe ({decoding.language})", unit="utt", disable=not progress)
    for batch in batches:
        arrays = [audio for _, audio in batch]
        is_long = len(arrays[0]) > limit and decoding.long_form
        started = time.perf_counter()
        with torch.inference_mode(), _quiet_transformers():
            if is_long:
                sequences, languages, budgets = _decode_long(loaded, arrays, kwargs, device)
            else:
                sequences, languages, budgets = _decode_short(
                    loaded, [cache_name(utt) for utt, _ in batch], arrays, decoding, kwargs, device, encoder_reuse)
        elapsed = time.perf_counter() - started
        texts = processor.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        batch_records = []
        for (utt, audio), text, seq, language, budget in zip(batch, texts, sequences, languages, budgets, strict=True):
            seconds = len(audio) / SAMPLE_RATE
            batch_records.append(
                {
                    "id": utt.id,
                    "reference": utt.reference,
                    "hypothesis": text.strip(),
                    "speaker": utt.speaker,
                    "seconds": seconds,
                    "decode_seconds": elapsed / len(batch),
                    "language": language,
                    "long_form": is_long,
                    "truncated": seconds > WINDOW_SECONDS and not decoding.long_form,
                    "hit_token_budget": budget is not None and _content_tokens(seq, pad_id) >= budget,
                }
            )
        records.extend(batch_records)
        if on_batch is not None:
            on_batch(batch_records)
        bar.update(len(batch))
    bar.close()
    order = {utt.id: index for index, utt in enumerate(utterances)}
    records.sort(key=lambda record: order[record["id"]])
    return records
