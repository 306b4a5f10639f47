"""The proposer protocol: where the guesses of a step come from, for every row of the batch at once.

Before each forward the engine asks its proposer for every running row's guesses in one call
(``propose``), so a proposer that runs a model of its own (a draft) drafts for the whole batch in
batched forwards. A row is described by what the step knows before its forward: the prompt tokens'
ranked candidates (top-k of the prompt slots of the last accepted node, host lists), the row's
history and how far a continuation may reach. After the step the proposer is told what each row
committed (``accepted``), and when a request leaves, ``reset`` frees what it kept for it. Stateless
proposers derive from ``RowProposer`` and write ``propose_row`` alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ppdecode.tree.spec import TreeSpec

# Who guessed a token (StreamChunk.origins): the model itself (root, bonus), the prompt tokens,
# prompt lookup, a draft model.
MODEL, PPD, LOOKUP, DRAFT = "model", "ppd", "lookup", "draft"

Ranked = list[list[int]]  # [D][top_k] token ids per depth, best first, distinct within a depth


@dataclass(frozen=True)
class Proposal:
    """The guesses of one row's step.

    candidates: [D][top_k] token ids per depth, best first, distinct within a depth; None without
    prompt distributions (D = 0). continuation: one guessed continuation from depth 1 on (prompt
    lookup or a draft model), possibly reaching past depth D; where it is within D, it is the
    candidates' rank 0. copied: how many leading depths have a continuation token at rank 0 (their
    guesses come from the continuation's proposer). source: who wrote the continuation ("lookup",
    "draft"). tree: where the proposer brings the tree its candidates are verified in (a draft's
    ``sibling_tree``, verified by a target without prompt tokens of its own); None: the engine's tree.
    """

    candidates: Ranked | None
    continuation: tuple[int, ...] = ()
    copied: int = 0
    source: str = LOOKUP
    tree: TreeSpec | None = None


@dataclass(frozen=True)
class RowContext:
    """One row as its proposer sees it before the step's forward."""

    request_id: str
    ranked: Ranked | None  # [D][top_k] the prompt tokens' candidates, None at depth 0 or without them
    history: list[int]  # the prompt and every committed token, the current root last
    reach: int  # how many tokens past the root a continuation may reach


class Proposer(Protocol):
    def propose(self, rows: Sequence[RowContext]) -> list[Proposal]:
        """One proposal per row, in order. Candidates at depth i guess the token at
        ``len(history) + i - 1``; a continuation is at most ``reach`` long."""
        ...

    def accepted(self, request_id: str, history: list[int], accepted: int) -> None:
        """After a step: the row's history now ends with what it committed (``accepted`` guesses and
        the bonus token, the next root)."""
        ...

    def reset(self, request_id: str) -> None:
        """The request left the engine: forget what was kept for it."""
        ...


def join_continuation(
    candidates: Ranked | None, continuation: list[int] | tuple[int, ...], source: str
) -> Proposal:
    """The continuation takes rank 0 at each depth it reaches; the candidates there move one rank
    down (a duplicate is moved, not repeated, so siblings stay distinct and both rules stay exact)."""
    if not continuation or candidates is None:
        return Proposal(candidates, tuple(continuation), 0, source)
    rows = list(candidates)
    for i, token in enumerate(continuation[: len(rows)]):
        row = rows[i]
        rows[i] = [token, *(t for t in row if t != token)][: len(row)]
    return Proposal(rows, tuple(continuation), min(len(rows), len(continuation)), source)


class RowProposer:
    """A proposer without state: each row's proposal depends on that row alone."""

    def propose_row(self, ranked: Ranked | None, history: list[int], reach: int) -> Proposal:
        raise NotImplementedError

    def propose(self, rows: Sequence[RowContext]) -> list[Proposal]:
        return [self.propose_row(row.ranked, row.history, row.reach) for row in rows]

    def accepted(self, request_id: str, history: list[int], accepted: int) -> None:
        return None

    def reset(self, request_id: str) -> None:
        return None
