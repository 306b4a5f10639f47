"""Prompt lookup joined to the prompt tokens' guesses: copy what followed the last n-gram before.

Answers often repeat their input (code, translation, summaries, rewrites). When the last ``n``
tokens of the history (prompt + committed tokens, the root last) occurred earlier, the tokens that
followed that earlier occurrence become the rank-0 candidate of each depth, and the prompt tokens'
own candidates move one rank down (a duplicate is moved, not repeated, so siblings stay distinct and
lossless sampling stays exact). When the match is long enough to trust (``chain_ngram`` tokens), the
copied continuation may also reach past the tree: the engine verifies the rest as a *lookup chain*
under the tree's rank-0 path, so a step can commit more tokens than there are prompt tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ppdecode.proposers.base import LOOKUP, Proposal, Proposer, RowContext, join_continuation


@dataclass(frozen=True)
class LookupMatch:
    ngram: int  # length of the matched n-gram (0: no match)
    continuation: list[int]  # what followed its latest earlier occurrence


def lookup_match(history: list[int], length: int, max_ngram: int = 3, min_ngram: int = 1) -> LookupMatch:
    """Up to ``length`` tokens that followed the latest earlier occurrence of the history's last n-gram.

    The longest n from ``max_ngram`` down to ``min_ngram`` with an earlier occurrence wins; among
    occurrences of that n-gram, the latest one.
    """
    end = len(history)
    if end < 2 or length < 1:
        return LookupMatch(0, [])
    last = history[-1]
    # earlier occurrences of the last token, latest first (the final position is the pattern itself)
    occurrences = [i for i in range(end - 2, -1, -1) if history[i] == last]
    for n in range(min(max_ngram, end - 1), min_ngram - 1, -1):
        pattern = history[end - n :]
        for i in occurrences:
            if i >= n - 1 and history[i - n + 1 : i + 1] == pattern:
                return LookupMatch(n, history[i + 1 : i + 1 + length])
    return LookupMatch(0, [])


def lookup_continuation(history: list[int], length: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """The continuation of ``lookup_match`` alone ([] when nothing matches)."""
    return lookup_match(history, length, max_ngram, min_ngram).continuation


class LookupProposer:
    """Wraps a proposer: the lookup continuation becomes rank 0 at each depth it reaches.

    The continuation goes past the inner proposer's depth only for a match of at least
    ``chain_ngram`` tokens: shorter matches are too often chance repeats to pay for extra inputs.
    Where lookup copies, its continuation replaces the inner proposer's own (a draft's); elsewhere
    the inner proposal stands.
    """

    def __init__(self, inner: Proposer, max_ngram: int = 3, min_ngram: int = 1, chain_ngram: int = 2) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        if chain_ngram < 1:
            raise ValueError(f"chain_ngram must be >= 1, got {chain_ngram}")
        self.inner = inner
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.chain_ngram = chain_ngram

    def propose(self, rows: Sequence[RowContext]) -> list[Proposal]:
        matches = [self._match(row) for row in rows]
        # where lookup copies far enough to make a chain, the inner proposer need not reach (a draft
        # model does not write a draft that the copy replaces)
        asks = [
            replace(row, reach=0) if match.ngram >= self.chain_ngram else row
            for row, match in zip(rows, matches, strict=True)
        ]
        inner = self.inner.propose(asks)
        return [self._join(p, match) for p, match in zip(inner, matches, strict=True)]

    def _match(self, row: RowContext) -> LookupMatch:
        depth = 0 if row.ranked is None else len(row.ranked)
        return lookup_match(row.history, max(row.reach, depth), self.max_ngram, self.min_ngram)

    def _join(self, proposal: Proposal, match: LookupMatch) -> Proposal:
        candidates = proposal.candidates  # [D][K]
        # a proposer's own tree (a draft's guesses) is not a depth of the engine's tree to copy into
        depth = 0 if candidates is None or proposal.tree is not None else len(candidates)
        copied = match.continuation if match.ngram >= self.chain_ngram else match.continuation[:depth]
        if not copied:
            return proposal
        return join_continuation(candidates, copied, LOOKUP)

    def accepted(self, request_id: str, history: list[int], accepted: int) -> None:
        self.inner.accepted(request_id, history, accepted)

    def reset(self, request_id: str) -> None:
        self.inner.reset(request_id)
