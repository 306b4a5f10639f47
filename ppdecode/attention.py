"""Grouped-query attention for decoding steps: the query heads of a key/value head share its keys as they are.

A model with grouped-query attention (SmolLM2: 9 query heads on 3 key/value heads) reads each key/value
head with several query heads. transformers' sdpa path does that without copies for a single query
(``pack_gqa``), but a step of several inputs with a mask, which every tree step is, repeats the keys
and values for each query head (``repeat_kv``): a copy of the row's whole cache per layer, four times
the keys for four rows, and attention over 9 heads instead of 3. Here the queries of a group are laid
side by side instead, [B, kv_heads, groups · W, D] against the cache's own [B, kv_heads, K, D], with the
step's mask (shared by every head) repeated per group. The result is the same attention (each query row
is its own softmax), with no copy of the cache.

A query's result is also the same whether it comes alone (a one-token step) or with others (a chain,
a tree, a prefill): a lone query takes this path too (sdpa's own path for it rounds differently), and
no call holds more than ``QUERY_ROWS`` query rows (the kernel's query blocks grow with the call). With
the engine reading keys in whole blocks (``ppdecode.step.KEY_BLOCK``) a verified token then rounds as
it would decoded alone, and in bf16 prompt lookup writes vanilla decoding's text.

``use_grouped_attention`` switches a model to it (registered with transformers as
``GROUPED_ATTENTION`` on first use); every case it does not cover (no grouping, several queries
without a mask, soft-capping, position bias, attention weights asked for) goes to transformers' sdpa
as it is.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GROUPED_ATTENTION = "ppdecode_grouped_sdpa"
# sdpa's CPU kernel takes queries in blocks whose size grows with the call's queries (32 below 192),
# and a query's result depends on its block's size; calls of at most this many query rows keep it at
# 32, so that a query's attention is the same in a prefill, a tree step or a one-token step
QUERY_ROWS = 96


def grouped_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, heads, W, D]
    key: torch.Tensor,  # [B, kv_heads, K, D]
    value: torch.Tensor,  # [B, kv_heads, K, D]
    attention_mask: torch.Tensor | None,  # [B, 1, W, K] additive
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    groups = getattr(module, "num_key_value_groups", 1)
    width = query.shape[2]
    if attention_mask is None and width == 1 and groups > 1:
        # a lone query sees every key; it goes the grouped way too, with a mask that hides nothing:
        # sdpa's own kernel for it sums in another order, and a one-token step would then round
        # differently from the same token's step in a tree
        attention_mask = query.new_zeros(query.shape[0], 1, 1, key.shape[2])
    plain = (
        groups == 1
        or not isinstance(attention_mask, torch.Tensor)
        or attention_mask.shape[1] != 1
        or dropout
        or kwargs.get("softcap") is not None
        or kwargs.get("position_bias") is not None
        or kwargs.get("output_attentions", False)
    )
    if plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    assert attention_mask is not None
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    packed = query.reshape(batch, kv_heads, groups * width, dim)  # head h = g · groups + r, query w
    if width == 1:  # one mask row, shared by the group's queries as it is
        mask = attention_mask
    else:
        mask = attention_mask.expand(batch, groups, width, -1).reshape(batch, 1, groups * width, -1)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    rows = groups * width
    if rows <= QUERY_ROWS:
        out = sdpa(packed, key, value, attn_mask=mask, scale=scaling)
    else:
        starts = range(0, rows, QUERY_ROWS)
        blocks = [(packed[:, :, s : s + QUERY_ROWS], mask[:, :, s : s + QUERY_ROWS]) for s in starts]
        out = torch.cat([sdpa(q, key, value, attn_mask=m, scale=scaling) for q, m in blocks], dim=2)
    # [B, kv_heads, groups · W, D] -> [B, W, heads, D], the layout the attention's output projection reads
    return out.reshape(batch, heads, width, dim).transpose(1, 2).contiguous(), None


def use_grouped_attention(model: Any) -> bool:
    """Switch ``model`` (an sdpa model) to grouped attention in place; False where it keeps its own.

    The attention function and its mask function (sdpa's) are registered with transformers here, on
    first use, not on import.
    """
    if getattr(model.config, "_attn_implementation", None) not in ("sdpa", GROUPED_ATTENTION):
        return False
    AttentionInterface.register(GROUPED_ATTENTION, grouped_sdpa_forward)
    AttentionMaskInterface.register(GROUPED_ATTENTION, sdpa_mask)
    model.set_attn_implementation(GROUPED_ATTENTION)
    return True


def uses_grouped_attention(model: Any) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == GROUPED_ATTENTION
