"""One decoding step of a batch as typed objects: row plans → batched inputs → one forward → logits.

A ``RowPlan`` says what one row feeds (host side): the committed length it starts at, any context in
front (a prefill), and the tree's token inputs (root, candidate nodes, chain) with its ``TreeBuffers``.
``build_inputs`` turns the rows of a step into one padded batch: embeddings (token or prompt-slot),
positions, the attention mask over the cache and the step, and the deep prompt tokens' layer vectors.
The engine and the tuner's latency probe both build their forwards here.

Layout of batch row b (W = the widest row's inputs; shorter rows are padded):

    [ prefix (context, prefill only) | tree: root, nodes, chain, prompt slots | padding ]

Input w of row b is written to the cache at ``start_b + w``; its position is ``start_b + w`` in the
prefix and ``start_b + len(prefix) + offset`` in the tree. Padding sees only itself and is never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ppdecode.cache import KVCache
from ppdecode.models import LoadedModel
from ppdecode.prompt_tokens import PromptTokens
from ppdecode.tree.buffers import TreeBuffers


@dataclass(frozen=True)
class RowPlan:
    """What one row feeds a step; ``tokens`` are the tree's token inputs (root first)."""

    start: int  # the row's committed length: where its first input goes in the cache
    tokens: tuple[int, ...]  # [1 + num_nodes] root, candidate nodes, chain
    buffers: TreeBuffers
    prefix: tuple[int, ...] = ()  # context in front of the root (a prefill's chunk)
    origins: tuple[str, ...] = ()  # [1 + num_nodes] who guessed each token input ("model" for the root)

    def __post_init__(self) -> None:
        assert len(self.tokens) == 1 + self.buffers.num_nodes, "one token per token input of the tree"
        if not self.origins:
            object.__setattr__(self, "origins", ("model",) * len(self.tokens))

    @property
    def width(self) -> int:
        return len(self.prefix) + self.buffers.num_inputs


@dataclass(frozen=True)
class StepInputs:
    """A step's batched forward inputs. Logits come back for columns ``logits_from .. W - 1``."""

    first_row: int  # cache row of batch row 0 (rows are consecutive)
    embeds: torch.Tensor  # [B, W, H]
    positions: torch.Tensor  # [B, W] model positions
    writes: torch.Tensor  # [B, W] cache positions the inputs are written to
    mask: Any  # [B, 1, W, K] additive float mask (or one per layer type), None = plain causal
    key_length: int  # K
    logits_from: int  # first column whose logits are computed
    extra: dict[str, Any]  # further forward keywords (deep prompt tokens' layer vectors)

    @property
    def batch_size(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def width(self) -> int:
        return int(self.embeds.shape[1])


# Keys are read in blocks of this many: a CPU's attention kernel sums a query's scores in vector
# lanes and a scalar tail, and a key's lane, so the order of the sums, depends on how many keys the
# call reads. With whole blocks it does not, and a token's attention is the same whether it is
# verified in a tree, a chain or a prefill, or decoded alone; masked keys add exact zeros.
KEY_BLOCK = 64


def _attend(plans: list[RowPlan], width: int, key_length: int) -> torch.Tensor:
    """[B, W, K] bool: True where input w of row b may attend to cache position k."""
    attend = torch.zeros(len(plans), width, key_length, dtype=torch.bool)
    for b, plan in enumerate(plans):
        p, t, s = len(plan.prefix), plan.buffers.num_inputs, plan.start
        attend[b, : p + t, :s] = True  # the committed cache
        if p:
            attend[b, :p, s : s + p] = torch.ones(p, p, dtype=torch.bool).tril()
            attend[b, p : p + t, s : s + p] = True  # the tree sees the whole chunk in front of it
        attend[b, p : p + t, s + p : s + p + t] = plan.buffers.attend.cpu()
        pad = torch.arange(p + t, width)
        attend[b, pad, s + pad] = True  # padding sees itself: a finite softmax, never read
    return attend


def sliding_window(base: LoadedModel) -> int | None:
    """The window of the model's sliding-window layers, None if it has none."""
    text_config = base.model.config.get_text_config()
    if "sliding_attention" not in (getattr(text_config, "layer_types", None) or []):
        return None
    return getattr(text_config, "sliding_window", None)


def additive_mask(base: LoadedModel, attend: torch.Tensor, positions: torch.Tensor) -> Any:
    """[B, W, K] bool + [B, W] positions -> additive float mask(s) [B, 1, W, K] in the model's dtype.

    Sliding-window layers (Gemma 3) get their own mask under the key of their layer type; a committed
    key's position is its cache index.
    """
    device, dtype = base.device, base.dtype
    blocked = torch.finfo(dtype).min
    full = torch.zeros(attend.shape, dtype=dtype).masked_fill_(~attend, blocked).to(device)[:, None]
    window = sliding_window(base)
    if window is None:
        return full
    keys = torch.arange(attend.shape[-1])
    outside = keys[None, None, :] <= positions.cpu()[:, :, None] - window  # [B, W, K]
    sliding = full.masked_fill(outside.to(device)[:, None], blocked)
    return {"full_attention": full, "sliding_attention": sliding}


def build_inputs(
    base: LoadedModel,
    prompt_tokens: PromptTokens | None,
    plans: list[RowPlan],
    first_row: int = 0,
    capacity: int | None = None,
) -> StepInputs:
    """The batched inputs of one step over cache rows ``first_row .. first_row + len(plans) - 1``.

    Attention reads keys in whole blocks of ``KEY_BLOCK`` (up to the cache's ``capacity``), the keys
    past a row's own masked.
    """
    device = base.device
    b = len(plans)
    width = max(plan.width for plan in plans)
    needed = max(plan.start for plan in plans) + width
    key_length = min(-(-needed // KEY_BLOCK) * KEY_BLOCK, capacity or needed)
    ids = torch.zeros(b, width, dtype=torch.long)  # [B, W]; slots and padding embed token 0, then replaced
    positions = torch.zeros(b, width, dtype=torch.long)
    writes = torch.zeros(b, width, dtype=torch.long)
    slot_rows: list[torch.Tensor] = []
    slot_columns: list[torch.Tensor] = []
    slot_prompt: list[torch.Tensor] = []
    slot_member: list[torch.Tensor] = []
    for row, plan in enumerate(plans):
        p, buffers = len(plan.prefix), plan.buffers
        ids[row, : p + len(plan.tokens)] = torch.tensor([*plan.prefix, *plan.tokens])
        writes[row] = plan.start + torch.arange(width)
        positions[row] = plan.start + torch.arange(width)
        positions[row, p : p + buffers.num_inputs] = plan.start + p + buffers.position_offsets.cpu()
        slots = buffers.num_inputs - len(plan.tokens)
        if slots:
            slot_rows.append(torch.full((slots,), row))
            slot_columns.append(torch.arange(p + len(plan.tokens), p + buffers.num_inputs))
            slot_prompt.append(buffers.slot_prompt_index.cpu())
            slot_member.append(buffers.slot_member.cpu())
    embeds = base.model.get_input_embeddings()(ids.to(device))  # [B, W, H]
    extra: dict[str, Any] = {}
    if slot_rows:
        assert prompt_tokens is not None, "prompt slots need prompt tokens"
        rows, columns = torch.cat(slot_rows).to(device), torch.cat(slot_columns).to(device)  # [S]
        prompt_index = torch.cat(slot_prompt).to(device)
        embeds[rows, columns] = prompt_tokens.slot_embeddings(
            prompt_index, torch.cat(slot_member).to(device), embeds.dtype
        )
        extra = prompt_tokens.forward_kwargs(columns, prompt_index, rows, embeds.dtype)
    # one token that reads every key: causal attention needs no mask (a sliding window always does)
    lone = b == 1 and width == 1 and sliding_window(base) is None
    if lone and key_length == needed:
        mask = None
    elif lone:  # its keys, then the block's padding
        mask = torch.full((1, 1, 1, key_length), torch.finfo(base.dtype).min, dtype=base.dtype)
        mask[..., :needed] = 0
        mask = mask.to(device)
    else:
        mask = additive_mask(base, _attend(plans, width, key_length), positions)
    return StepInputs(
        first_row=first_row,
        embeds=embeds,
        positions=positions.to(device),
        writes=writes.to(device),
        mask=mask,
        key_length=key_length,
        logits_from=min(len(plan.prefix) for plan in plans),
        extra=extra,
    )


def run_forward(base: LoadedModel, inputs: StepInputs, cache: KVCache) -> torch.Tensor:
    """One forward of the step's decoder; returns the final hidden states [B, W - logits_from, H].

    The output layer is not run here: verification applies it where it needs logits (``head_logits``),
    in slices, so that a step of many inputs (a long chain) never holds [W, vocab] logits at once. A
    prefill's context needs none, and on a small model that layer is a fifth of a forward.
    """
    cache.begin(inputs.first_row, inputs.writes, inputs.key_length)
    decoder = base.model.get_decoder()
    out = decoder(
        inputs_embeds=inputs.embeds,
        attention_mask=inputs.mask,
        position_ids=inputs.positions,
        cache=cache,
        use_cache=True,
        **inputs.extra,
    )
    return out.last_hidden_state[:, inputs.logits_from :]


def head_logits(base: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """The model's output layer on final hidden states: [..., H] -> [..., vocab] logits (with the final
    soft-capping of the families that have it, as their own forward applies it)."""
    logits = base.model.get_output_embeddings()(hidden)
    cap = getattr(base.model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
