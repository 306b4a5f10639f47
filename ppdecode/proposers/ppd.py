"""Parallel Prompt Decoding's proposer: the top-k tokens of each prompt slot's distribution."""

from __future__ import annotations

import torch

from ppdecode.proposers.base import Proposal


class PromptTokenProposer:
    def propose(
        self, prompt_logits: torch.Tensor | None, top_k: int, history: list[int], reach: int
    ) -> Proposal:
        if prompt_logits is None:
            return Proposal(None)
        return Proposal(prompt_logits.topk(top_k, dim=-1).indices)  # [D, top_k]
