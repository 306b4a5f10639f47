"""The proposer protocol: the guesses of a tree step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Proposal:
    """The guesses of one step.

    candidates: [D, top_k] token ids per depth, best first, distinct within a depth; None without
    prompt distributions (D = 0). continuation: one guessed continuation from depth 1 on (prompt
    lookup), possibly reaching past depth D; where it is within D, it is the candidates' rank 0.
    """

    candidates: torch.Tensor | None
    continuation: tuple[int, ...] = ()


class Proposer(Protocol):
    def propose(
        self, prompt_logits: torch.Tensor | None, top_k: int, history: list[int], reach: int
    ) -> Proposal:
        """Guesses after ``history`` (the prompt and the tokens committed so far, the current root last).

        prompt_logits: [D, vocab] logits of the D prompt slots of the last accepted node, or None;
        candidates at depth i guess the token at ``len(history) + i - 1``; ``reach`` bounds the
        continuation's length.
        """
        ...
