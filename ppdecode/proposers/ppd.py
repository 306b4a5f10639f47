"""Parallel Prompt Decoding's proposer: the top-k tokens of each prompt slot's distribution."""

from __future__ import annotations

import torch


class PromptTokenProposer:
    def candidates(self, prompt_logits: torch.Tensor, top_k: int, history: list[int]) -> torch.Tensor:
        return prompt_logits.topk(top_k, dim=-1).indices  # [D, top_k]
