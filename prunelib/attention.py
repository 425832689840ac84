"""An attention path for Whisper that computes one query (a greedy decoding step) by plain matmul-softmax.

PyTorch's CPU kernel for scaled_dot_product_attention is built for many queries; a decoding
step has one per row, over up to 1,500 encoder frames, where two matrix products and a
softmax do the same arithmetic faster. Every other call (the encoder, the prompt, teacher
forcing, training) goes to transformers' own SDPA path unchanged, and its masks are SDPA's.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "prunelib_decode"  # the attention implementation's name in transformers' registries


def one_query_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        **kwargs) -> tuple[torch.Tensor, None]:
    """Attention as transformers calls it: matmul-softmax for one query in inference, SDPA otherwise."""
    if query.shape[2] != 1 or module.training or kwargs.get("head_mask") is not None \
            or kwargs.get("output_attentions"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scores = torch.matmul(query, key.transpose(2, 3))
    if scaling is not None and scaling != 1.0:
        scores = scores * scaling
    elif scaling is None:
        scores = scores * query.shape[-1] ** -0.5
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool \
            else scores + mask
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, one_query_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_one_query_attention(model: nn.Module) -> None:
    """Switch a loaded Whisper model (encoder and decoder share its config) to this attention path."""
    model.config._attn_implementation = NAME
