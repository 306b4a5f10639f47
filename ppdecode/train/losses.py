"""Teacher and student logits from one forward, and the distillation / cross-entropy losses (METHOD §2).

A batch row is one sequence (prompt + the model's own greedy answer) with C cut points. For a cut whose
context has length L (tokens 0..L-1), the targets y_{t+1..t+N+1} are the sequence's tokens L..L+N:

    teacher Q_k  = logits at sequence position L+k-1   (has read y_{t+1..t+k}, predicts y_{t+k+1})
    student P_k  = mean over the V EPTs of prompt token k, placed at position L-1+k, which see the
                   sequence tokens 0..L-1 and the EPTs (k', j) with k' <= k of the same cut and member

Inputs of a row: [sequence (right-padded to S), C·N·V prompt slots]. Slot (c, k, j) has index
(c·N + k)·V + j, so slot positions are the same in every row (deep prompt tokens need that: their hook
adds one delta per sequence index for all rows). The sequence part never sees a slot, so it is the
teacher's ordinary causal forward; slots do not see the y's.

Two ways to run that forward, with equal results:
- ``single``: literally one forward over [sequence, slots] with the 4D mask (gradients flow through
  the whole input, so the backward costs as much as for every sequence token);
- ``split`` (the default): the same forward cut at the slot boundary, like a chunked prefill: the
  sequence runs under no_grad into a KV cache, then the slots run with grad on top of that cache.
  Nothing in the sequence part depends on a trainable parameter, so the backward only touches the
  C·N·V slot rows: several times cheaper on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from ppdecode.models import LoadedModel
from ppdecode.prompt_tokens import PromptTokens

ALPHA = 0.8


@dataclass
class CutBatch:
    """B sequences with C cuts each; every tensor field carries its shape."""

    input_ids: torch.Tensor  # [B, S] right-padded
    lengths: torch.Tensor  # [B] real sequence lengths
    context: torch.Tensor  # [B, C] context length L of each cut (1 for an unused cut)
    valid: torch.Tensor  # [B, C] bool, False for padding cuts

    @property
    def num_cuts(self) -> int:
        return int(self.context.shape[1])


def make_batch(
    sequences: Sequence[tuple[list[int], list[int], list[int]]], num_prompt_tokens: int, pad_id: int = 0
) -> CutBatch:
    """(prompt ids, response ids, cuts t) per row -> a right-padded CutBatch (context L = len(prompt) + t)."""
    width = max(len(p) + len(r) for p, r, _ in sequences)
    cuts = max(len(c) for _, _, c in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    lengths = torch.zeros(len(sequences), dtype=torch.long)
    context = torch.ones((len(sequences), cuts), dtype=torch.long)
    valid = torch.zeros((len(sequences), cuts), dtype=torch.bool)
    for row, (prompt, response, row_cuts) in enumerate(sequences):
        sequence = prompt + response
        ids[row, : len(sequence)] = torch.tensor(sequence)
        lengths[row] = len(sequence)
        for c, t in enumerate(row_cuts):
            length = len(prompt) + t
            if not length >= 1 or length + num_prompt_tokens >= len(sequence):
                raise ValueError(f"cut {t} leaves no room for {num_prompt_tokens} + 1 targets in row {row}")
            context[row, c], valid[row, c] = length, True
    return CutBatch(ids, lengths, context, valid)


@dataclass
class SlotLayout:
    """Where the C·N·V prompt slots of every row go: positions, masks, which embedding."""

    prompt_index: torch.Tensor  # [Q] prompt token k (0-based) of each slot, Q = C·N·V
    member: torch.Tensor  # [Q] ensemble member j of each slot
    cut: torch.Tensor  # [Q] cut c of each slot
    positions: torch.Tensor  # [B, Q] absolute positions L + k
    attend_sequence: torch.Tensor  # [B, Q, S] bool: slot sees sequence token s < L
    attend_slots: torch.Tensor  # [Q, Q] bool: same cut, same member, k' <= k


def slot_layout(batch: CutBatch, num_prompt_tokens: int, ensemble: int) -> SlotLayout:
    n, v, c = num_prompt_tokens, ensemble, batch.num_cuts
    grid = torch.arange(c * n * v)
    cut, prompt_index, member = grid // (n * v), (grid // v) % n, grid % v  # [Q] each
    context = batch.context[:, cut]  # [B, Q]
    positions = context + prompt_index  # EPT (k, j) of a cut with context L sits at L - 1 + (k + 1)
    width = batch.input_ids.shape[1]
    attend_sequence = torch.arange(width)[None, None, :] < context[:, :, None]  # [B, Q, S]
    attend_slots = (
        (cut[:, None] == cut[None, :])
        & (member[:, None] == member[None, :])
        & (prompt_index[None, :] <= prompt_index[:, None])
    )  # [Q, Q]
    return SlotLayout(prompt_index, member, cut, positions, attend_sequence, attend_slots)


def _additive(attend: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[B, Q, K] bool -> [B, 1, Q, K] additive float mask (0 attend, finfo.min blocked)."""
    mask = torch.zeros(attend.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~attend.to(device), torch.finfo(dtype).min)[:, None]


def _masks(base: LoadedModel, attend: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> object:
    """The 4D mask(s) the model takes: one tensor, or per layer type for sliding-window families."""
    full = _additive(attend, base.dtype, base.device)
    config = base.model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    if "sliding_attention" not in (getattr(config, "layer_types", None) or []) or window is None:
        return full
    outside = k_pos[:, None, :] <= q_pos[:, :, None] - window  # [B, Q, K]
    return {
        "full_attention": full,
        "sliding_attention": _additive(attend & ~outside, base.dtype, base.device),
    }


def _logits(base: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """[..., H] final hidden states -> [..., vocab] float logits (with the family's soft-capping, if any)."""
    logits = base.model.get_output_embeddings()(hidden).float()
    cap = getattr(base.model.config.get_text_config(), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def teacher_student_logits(
    base: LoadedModel, tokens: PromptTokens, batch: CutBatch, mode: str = "split"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student logits [B, C, N, vocab] (with grad) and detached teacher logits [B, C, N, vocab]."""
    if mode not in ("split", "single"):
        raise ValueError(f"unknown forward mode {mode!r}: use 'split' or 'single'")
    n, v = tokens.num_prompt_tokens, tokens.ensemble
    device, dtype = base.device, base.dtype
    ids = batch.input_ids.to(device)
    b, s = ids.shape
    c = batch.num_cuts
    layout = slot_layout(batch, n, v)
    q = layout.prompt_index.numel()
    backbone = base.model.base_model
    embeds = base.model.get_input_embeddings()(ids)  # [B, S, H]
    slots = tokens.slot_embeddings(layout.prompt_index.to(device), layout.member.to(device), dtype)  # [Q, H]
    slots = slots[None].expand(b, -1, -1)  # [B, Q, H]
    seq_pos = torch.arange(s)[None].expand(b, -1)  # [B, S]
    causal = torch.ones(s, s, dtype=torch.bool).tril()[None].expand(b, -1, -1)  # [B, S, S]
    all_pos = torch.cat([seq_pos, layout.positions], 1)  # [B, S + Q]
    slot_rows = torch.cat(
        [layout.attend_sequence, layout.attend_slots[None].expand(b, -1, -1)], 2
    )  # [B, Q, S+Q]
    prompt_index = layout.prompt_index.to(device)

    if mode == "single":
        attend = torch.cat([torch.cat([causal, torch.zeros(b, s, q, dtype=torch.bool)], 2), slot_rows], 1)
        mask = _masks(base, attend, all_pos, all_pos)
        hidden = backbone(
            inputs_embeds=torch.cat([embeds, slots], 1),
            attention_mask=mask,
            position_ids=all_pos.to(device),
            use_cache=False,
            **tokens.forward_kwargs(torch.arange(s, s + q, device=device), prompt_index),
        ).last_hidden_state  # [B, S+Q, H]
        seq_hidden, slot_hidden = hidden[:, :s].detach(), hidden[:, s:]
    else:
        cache = DynamicCache()
        with torch.no_grad():
            mask = _masks(base, causal, seq_pos, seq_pos)
            seq_hidden = backbone(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=seq_pos.to(device),
                cache=cache,
                use_cache=True,
            ).last_hidden_state  # [B, S, H]
        mask = _masks(base, slot_rows, layout.positions, all_pos)
        slot_hidden = backbone(
            inputs_embeds=slots,
            attention_mask=mask,
            position_ids=layout.positions.to(device),
            cache=cache,
            use_cache=True,
            **tokens.forward_kwargs(torch.arange(q, device=device), prompt_index),
        ).last_hidden_state  # [B, Q, H]

    # Teacher: Q_k at sequence position L + k - 1 for k = 1..N (the position of y_{t+k}).
    where = (batch.context[:, :, None] + torch.arange(n)[None, None, :]).clamp(max=s - 1)  # [B, C, N]
    gathered = seq_hidden.gather(1, where.reshape(b, -1, 1).expand(-1, -1, seq_hidden.shape[-1]).to(device))
    with torch.no_grad():
        teacher = _logits(base, gathered).reshape(b, c, n, -1)  # [B, C, N, vocab]
    student = (
        _logits(base, slot_hidden).reshape(b, c, n, v, -1).mean(3)
    )  # [B, C, N, vocab]: mean of EPT logits
    return student, teacher.detach()


def targets(batch: CutBatch, num_prompt_tokens: int) -> torch.Tensor:
    """y_{t+k+1} for k = 1..N: sequence tokens L + 1 .. L + N -> [B, C, N]."""
    where = batch.context[:, :, None] + torch.arange(1, num_prompt_tokens + 1)[None, None, :]
    return batch.input_ids.gather(1, where.flatten(1).clamp(max=batch.input_ids.shape[1] - 1)).view(
        where.shape
    )


def _weights(n: int, alpha: float, device: torch.device) -> torch.Tensor:
    return alpha ** torch.arange(n, dtype=torch.float32, device=device)  # α^(k-1), k = 1..N


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, alpha: float = ALPHA
) -> torch.Tensor:
    """(1/N) Σ_k α^(k-1) KL(Q_k ‖ P_k), averaged over valid cuts. student, teacher: [B, C, N, vocab]."""
    log_q = F.log_softmax(teacher.float(), -1)
    log_p = F.log_softmax(student.float(), -1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # [B, C, N]
    per_cut = (kl * _weights(kl.shape[-1], alpha, kl.device)).mean(-1)  # [B, C]
    valid = valid.to(per_cut.device)
    return (per_cut * valid).sum() / valid.sum().clamp(min=1)


def cross_entropy_loss(
    student: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, alpha: float = ALPHA
) -> torch.Tensor:
    """(1/N) Σ_k α^(k-1) CE(y_{t+k+1}, P_k), averaged over valid cuts. target: [B, C, N]."""
    log_p = F.log_softmax(student.float(), -1)
    ce = -log_p.gather(-1, target.to(log_p.device)[..., None])[..., 0]  # [B, C, N]
    per_cut = (ce * _weights(ce.shape[-1], alpha, ce.device)).mean(-1)
    valid = valid.to(per_cut.device)
    return (per_cut * valid).sum() / valid.sum().clamp(min=1)


def rank_counts(
    student: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor, top_k: int = 10
) -> torch.Tensor:
    """How often the true token is exactly rank r of each prompt token: [N, top_k] counts.

    student: [B, C, N, vocab]; truth: [B, C, N] token ids; ranks count strictly larger logits.
    """
    true_logit = student.gather(-1, truth.to(student.device)[..., None])  # [B, C, N, 1]
    rank = (student > true_logit).sum(-1)  # [B, C, N]
    n = student.shape[2]
    counts = torch.zeros(n, top_k, dtype=torch.long)
    keep = valid.to(rank.device)[..., None].expand_as(rank)  # [B, C, N]
    for k in range(n):
        ranks = rank[..., k][keep[..., k]]
        ranks = ranks[ranks < top_k].cpu()
        counts[k] += torch.bincount(ranks, minlength=top_k)[:top_k]
    return counts
