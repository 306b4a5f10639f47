"""The one place that calls the base model's forward: embeddings, explicit positions, a 4D float mask, cache.

No modeling file is forked: everything goes through arguments every HuggingFace causal LM accepts
(``inputs_embeds``, ``attention_mask``, ``position_ids``, ``cache``). Per-family glue is limited to
sliding-window layers (Gemma 3), which get their own mask under the key of their layer type.
"""

from __future__ import annotations

from typing import Any

import torch

from ppdecode.cache import KVCache
from ppdecode.models import LoadedModel


def step_attend(cache_length: int, prefix: int, tree_attend: torch.Tensor) -> torch.Tensor:
    """Who-sees-whom for ``prefix`` causal inputs followed by a tree, on top of ``cache_length`` rows.

    Returns [prefix + T, cache_length + prefix + T] bool, True where a query may attend to a key.
    """
    t = tree_attend.shape[0]
    rows = prefix + t
    device = tree_attend.device
    attend = torch.ones(rows, cache_length + rows, dtype=torch.bool, device=device)
    if prefix:
        attend[:prefix, cache_length:] = torch.ones(prefix, rows, dtype=torch.bool, device=device).tril()
    attend[prefix:, cache_length + prefix :] = tree_attend
    return attend


class ModelRunner:
    """Runs forwards of one base model; knows its embedding table, mask dtype and layer types."""

    def __init__(self, base: LoadedModel) -> None:
        self.base = base
        self.model = base.model
        self.embedding = base.model.get_input_embeddings()
        text_config = base.model.config.get_text_config()
        layer_types = getattr(text_config, "layer_types", None) or []
        self.sliding_window: int | None = (
            getattr(text_config, "sliding_window", None) if "sliding_attention" in layer_types else None
        )
        self.device = base.device
        self.dtype = base.dtype
        self.time_in_forward = 0.0  # seconds, accumulated by the caller's timer

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """[n] token ids -> [n, H] input embeddings (including any scaling the family applies)."""
        return self.embedding(token_ids)

    def _mask(self, attend: torch.Tensor, positions: torch.Tensor, cache_length: int) -> Any:
        """[Q, K] bool attend + [Q] query positions -> 4D additive float mask(s) [1, 1, Q, K]."""
        blocked = torch.finfo(self.dtype).min
        full = torch.zeros(attend.shape, dtype=self.dtype, device=self.device)
        full.masked_fill_(~attend, blocked)
        if self.sliding_window is None or int(positions.max()) < self.sliding_window:
            return (
                full[None, None]
                if self.sliding_window is None
                else {"full_attention": full[None, None], "sliding_attention": full[None, None]}
            )
        key_positions = torch.cat([torch.arange(cache_length, device=self.device), positions])
        outside = key_positions[None, :] <= positions[:, None] - self.sliding_window  # [Q, K]
        sliding = full.masked_fill(outside, blocked)
        return {"full_attention": full[None, None], "sliding_attention": sliding[None, None]}

    def forward(
        self,
        embeds: torch.Tensor,  # [Q, H]
        positions: torch.Tensor,  # [Q] absolute positions
        attend: torch.Tensor | None,  # [Q, cache + Q] bool; None means plain causal
        cache: KVCache,
        keep_last: int = 0,
    ) -> torch.Tensor:
        """One forward over Q new inputs appended to the cache; returns logits [Q, vocab].

        ``keep_last`` > 0 computes the logits of the last ``keep_last`` inputs only ([keep_last, vocab]):
        a prefill needs none for its context, and the output layer is a large share of a small model.
        """
        mask = None if attend is None else self._mask(attend, positions, cache.length)
        out = self.model(
            inputs_embeds=embeds[None],
            attention_mask=mask,
            position_ids=positions[None],
            cache=cache.hf,
            use_cache=True,
            logits_to_keep=keep_last,
        )
        return out.logits[0]
