"""The KV cache of committed tokens, with the one operation tree decoding adds: commit selected rows."""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache


class KVCache:
    """Wraps a transformers ``DynamicCache``; rows beyond ``length`` after a forward are tree inputs.

    Every layer keeps the whole history (no sliding-window eviction): masks, not eviction, enforce a
    sliding window, so committing rows works the same for every layer type.
    """

    def __init__(self) -> None:
        self.hf = DynamicCache()

    @property
    def length(self) -> int:
        return self.hf.get_seq_length()

    def reset(self) -> None:
        self.hf = DynamicCache()

    def commit(self, start: int, keep: list[int]) -> None:
        """Keep rows ``start + keep[i]`` at ``start + i`` and drop every row after them.

        ``keep`` is increasing (a root-to-node path in input order), so ``keep[i] >= i`` and the copy
        never reads a row it has already overwritten in a way that matters: index_select copies first.
        """
        end = start + len(keep)
        contiguous = keep == list(range(len(keep)))
        layers: list[Any] = self.hf.layers  # DynamicLayer: .keys, .values [B, kv_heads, S, head_dim]
        index = None if contiguous else torch.tensor(keep, device=layers[0].keys.device) + start
        for layer in layers:
            if index is not None:
                # keys, values: [B, kv_heads, S, head_dim]
                layer.keys[:, :, start:end] = layer.keys.index_select(2, index)
                layer.values[:, :, start:end] = layer.values.index_select(2, index)
            layer.keys = layer.keys[:, :, :end]
            layer.values = layer.values[:, :, :end]

    def crop(self, length: int) -> None:
        """Drop every row from ``length`` on."""
        layers: list[Any] = self.hf.layers
        for layer in layers:
            layer.keys = layer.keys[:, :, :length]
            layer.values = layer.values[:, :, :length]
