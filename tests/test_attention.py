"""The one-query attention path agrees with SDPA and leaves every other call to it."""
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from prunelib.attention import NAME, one_query_attention


class _Module(nn.Module):
    is_causal = True


def _qkv(queries: int, keys: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (3, 4, queries, 16), (3, 4, keys, 16), (3, 4, keys, 16)
    return tuple(torch.randn(s, generator=generator) for s in shape)


def test_one_query_matches_sdpa_to_float_precision():
    module = _Module().eval()
    query, key, value = _qkv(1, 50)
    ours, _ = one_query_attention(module, query, key, value, None, scaling=1.0)
    theirs, _ = sdpa_attention_forward(module, query, key, value, None, scaling=1.0)
    assert ours.shape == theirs.shape == (3, 1, 4, 16)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_one_query_honours_a_boolean_mask():
    module = _Module().eval()
    query, key, value = _qkv(1, 10)
    mask = torch.ones(3, 1, 1, 10, dtype=torch.bool)
    mask[..., 7:] = False
    ours, _ = one_query_attention(module, query, key, value, mask, scaling=1.0)
    # The masked keys take no part: the same as attending over the first seven only.
    alone, _ = one_query_attention(module, query, key[:, :, :7], value[:, :, :7], None, scaling=1.0)
    assert torch.allclose(ours, alone, atol=1e-6)


def test_many_queries_and_training_go_to_sdpa_unchanged():
    module = _Module().eval()
    query, key, value = _qkv(5, 5)
    ours, _ = one_query_attention(module, query, key, value, None, scaling=1.0)
    theirs, _ = sdpa_attention_forward(module, query, key, value, None, scaling=1.0)
    assert torch.equal(ours, theirs)
    module.train()
    query, key, value = _qkv(1, 8)
    ours, _ = one_query_attention(module, query, key, value, None, scaling=1.0)
    theirs, _ = sdpa_attention_forward(module, query, key, value, None, scaling=1.0)
    assert torch.equal(ours, theirs)


def test_loaded_models_use_it(tiny_en):
    assert tiny_en.model.config._attn_implementation == NAME
