"""The KV cache: preallocated for (rows, max length), written by position, with per-row lengths.

Every decoder layer keeps keys and values in one tensor ``[rows, kv_heads, capacity, head_dim]``
allocated once (gpt-fast, nanochat). A forward writes each input at its own row and position; nothing
is concatenated per step. A step's inputs are written past a row's committed length; ``commit`` then
keeps the accepted ones by moving them in place, and the row's length says what is valid: the rest is
never read, because the mask hides it. Every layer keeps the whole history, sliding-window layers too
(Gemma 3): their window is a mask, not an eviction, so committing rows works alike for every layer.

The cache plugs into a transformers model as its ``cache`` argument (a ``Cache`` whose layers return
the written tensors); per-forward placement comes from ``begin`` and is shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


@dataclass(frozen=True)
class Placement:
    """Where one forward's inputs go: rows ``first .. first + B - 1``, input (b, w) at ``positions[b, w]``."""

    first: int
    batch: torch.Tensor  # [B, 1] cache row of each batch row
    positions: torch.Tensor  # [B, W] cache position of each input
    key_length: int  # K: keys the attention reads, [0, K) of every row


class _RowLayer(CacheLayerMixin):
    """One decoder layer's preallocated keys and values; ``placement`` is set by the owning cache."""

    def __init__(self, owner: KVCache) -> None:
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise AssertionError("the cache is allocated up front")

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states, value_states: [B, kv_heads, W, head_dim]
        place = self.owner.placement
        assert place is not None and self.keys is not None and self.values is not None
        self.keys[place.batch, :, place.positions] = key_states.transpose(1, 2)  # [B, W, kv_heads, D]
        self.values[place.batch, :, place.positions] = value_states.transpose(1, 2)
        rows = slice(place.first, place.first + key_states.shape[0])
        k = place.key_length
        return self.keys[rows, :, :k], self.values[rows, :, :k]  # [B, kv_heads, K, head_dim], views

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        place = self.owner.placement
        return (place.key_length if place else 0), 0

    def get_seq_length(self) -> int:
        return max(self.owner.lengths, default=0)

    def get_max_length(self) -> int:
        return self.owner.capacity


def kv_geometry(model: Any) -> tuple[int, int, int]:
    """(decoder layers, key/value heads, head dim) of a causal LM."""
    config = model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, heads, head_dim


def bytes_per_token(model: Any) -> int:
    """Cache bytes one position of one row takes across all layers (keys and values)."""
    layers, heads, head_dim = kv_geometry(model)
    return 2 * layers * heads * head_dim * next(model.parameters()).element_size()


class KVCache(Cache):
    """Keys and values of ``rows`` sequences of up to ``capacity`` positions each.

    The API is small: ``lengths`` (committed tokens per row), ``begin`` (place the next forward's
    inputs), ``commit`` (keep a row's accepted inputs), ``move`` (a row changes place), ``grow``
    (more rows or positions, done between steps and rarely), ``reset``.
    """

    def __init__(self, model: Any, rows: int, capacity: int) -> None:
        if rows < 1 or capacity < 1:
            raise ValueError(f"a cache needs at least one row and one position, got {rows} x {capacity}")
        num_layers, heads, head_dim = kv_geometry(model)
        self._geometry = (heads, head_dim)
        self._parameter = next(model.parameters())
        self._per_token = bytes_per_token(model)
        self.row_layers = [_RowLayer(self) for _ in range(num_layers)]
        super().__init__(layers=list(self.row_layers))
        self.rows, self.capacity = 0, 0
        self.lengths: list[int] = []
        self.placement: Placement | None = None
        self.grow(rows, capacity)

    @property
    def nbytes(self) -> int:
        return self.rows * self.capacity * self._per_token

    def grow(self, rows: int, capacity: int) -> None:
        """Make room for at least ``rows`` x ``capacity``; committed rows are copied over."""
        rows, capacity = max(rows, self.rows), max(capacity, self.capacity)
        if (rows, capacity) == (self.rows, self.capacity):
            return
        heads, head_dim = self._geometry
        dtype, device = self._parameter.dtype, self._parameter.device
        for layer in self.row_layers:
            # zeros, not empty: masked keys are multiplied by exactly 0, which NaN garbage would survive
            keys = torch.zeros(rows, heads, capacity, head_dim, dtype=dtype, device=device)
            values = torch.zeros_like(keys)
            if layer.keys is not None and layer.values is not None:
                keys[: self.rows, :, : self.capacity] = layer.keys
                values[: self.rows, :, : self.capacity] = layer.values
            layer.keys, layer.values = keys, values
            layer.is_initialized = True
        self.lengths += [0] * (rows - self.rows)
        self.rows, self.capacity = rows, capacity

    def _tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = []
        for layer in self.row_layers:
            assert layer.keys is not None and layer.values is not None
            pairs.append((layer.keys, layer.values))
        return pairs

    def reset(self) -> None:
        """Forget every row (the memory stays allocated; stale values are never read)."""
        self.lengths = [0] * len(self.lengths)
        self.placement = None

    def begin(self, first: int, positions: torch.Tensor, key_length: int) -> None:
        """Place the next forward: batch row b is cache row ``first + b``, its inputs at ``positions[b]``.

        positions: [B, W]. ``key_length`` bounds what attention reads; it must cover every position.
        """
        b = positions.shape[0]
        if first < 0 or first + b > self.rows:
            raise ValueError(f"rows {first}..{first + b - 1} are outside the cache's {self.rows} rows")
        assert key_length <= self.capacity
        batch = torch.arange(first, first + b, device=positions.device)[:, None]  # [B, 1]
        self.placement = Placement(first, batch, positions, key_length)

    def commit(self, row: int, start: int, keep: list[int]) -> None:
        """Keep the inputs written at ``start + keep[i]`` at ``start + i``; the row's length becomes
        ``start + len(keep)``. ``keep`` is increasing (a root-to-node path), so moving in place is safe:
        index_select reads before the write.
        """
        if keep != list(range(len(keep))):
            device = self._tensors()[0][0].device
            index = torch.tensor(keep, device=device) + start  # [len(keep)]
            end = start + len(keep)
            for keys, values in self._tensors():
                # keys, values: [rows, kv_heads, capacity, head_dim]
                keys[row, :, start:end] = keys[row].index_select(1, index)
                values[row, :, start:end] = values[row].index_select(1, index)
        self.lengths[row] = start + len(keep)

    def move(self, source: int, target: int) -> None:
        """Copy row ``source`` (its committed part) to row ``target``; ``source`` becomes empty."""
        length = self.lengths[source]
        for keys, values in self._tensors():
            keys[target, :, :length] = keys[source, :, :length]
            values[target, :, :length] = values[source, :, :length]
        self.lengths[target], self.lengths[source] = length, 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.lengths, default=0)
