"""The proposer protocol: the guesses of a tree step.

A proposer sees what the step knows before its forward: the prompt tokens' ranked candidates (top-k
of the prompt slots of the last accepted node, host lists) and the row's history. It returns the
candidates the tree takes its nodes from, and optionally a continuation that may reach past the tree
(a lookup chain). Proposers hold no per-row state here: the row's history is their input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

Ranked = list[list[int]]  # [D][top_k] token ids per depth, best first, distinct within a depth


@dataclass(frozen=True)
class Proposal:
    """The guesses of one step.

    candidates: [D][top_k] token ids per depth, best first, distinct within a depth; None without
    prompt distributions (D = 0). continuation: one guessed continuation from depth 1 on (prompt
    lookup), possibly reaching past depth D; where it is within D, it is the candidates' rank 0.
    copied: how many leading depths have a copied token at rank 0 (their guesses come from lookup).
    """

    candidates: Ranked | None
    continuation: tuple[int, ...] = ()
    copied: int = 0


class Proposer(Protocol):
    def propose(self, ranked: Ranked | None, history: list[int], reach: int) -> Proposal:
        """Guesses after ``history`` (the prompt and the tokens committed so far, the current root last).

        ranked: [D][top_k] the prompt tokens' candidates of the D prompt slots of the last accepted
        node, or None; candidates at depth i guess the token at ``len(history) + i - 1``; ``reach``
        bounds the continuation's length.
        """
        ...
