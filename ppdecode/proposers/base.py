"""The proposer protocol: candidates for the nodes of a tree step."""

from __future__ import annotations

from typing import Protocol

import torch


class Proposer(Protocol):
    def candidates(self, prompt_logits: torch.Tensor, top_k: int, history: list[int]) -> torch.Tensor:
        """Candidate tokens per depth, best first, distinct within a depth.

        prompt_logits: [D, vocab] logits of the D prompt slots of the last accepted node;
        history: the prompt's tokens and the tokens committed so far, the current root last
        (candidates at depth i guess the token at ``len(history) + i - 1``). Returns [D, top_k] token ids.
        """
        ...
