"""Proposers: prompt lookup's continuation and how it joins the prompt tokens' candidates."""

from __future__ import annotations

import pytest

from ppdecode.proposers import (
    LookupProposer,
    PromptTokenProposer,
    Proposal,
    Proposer,
    Ranked,
    RowContext,
    lookup_continuation,
    lookup_match,
)


def _one(proposer: Proposer, ranked: Ranked | None, history: list[int], reach: int) -> Proposal:
    """The proposal for one row."""
    return proposer.propose([RowContext("row", ranked, history, reach)])[0]


def test_lookup_copies_what_followed_the_last_ngram() -> None:
    history = [1, 2, 3, 4, 5, 9, 2, 3]  # "2 3" occurred before, followed by 4 5 9
    assert lookup_continuation(history, 3) == [4, 5, 9]
    assert lookup_continuation(history, 1) == [4]
    assert lookup_continuation(history, 10) == [4, 5, 9, 2, 3]  # up to the end of the history


def test_lookup_prefers_the_longest_ngram_then_the_latest_occurrence() -> None:
    # "2 3" occurs twice before the end; only the first occurrence extends to the 3-gram "1 2 3"
    assert lookup_continuation([1, 2, 3, 7, 8, 2, 3, 6, 1, 2, 3], 2) == [7, 8]
    # two occurrences of the same 2-gram: the latest one wins
    assert lookup_continuation([4, 5, 1, 4, 5, 2, 0, 4, 5], 1, max_ngram=2) == [2]


def test_lookup_without_an_earlier_occurrence_is_empty() -> None:
    assert lookup_continuation([5, 6, 7], 3) == []
    assert lookup_continuation([7], 3) == []
    assert lookup_continuation([1, 2, 3, 2], 3, min_ngram=2) == []  # "3 2" never occurred before
    assert lookup_continuation([1, 2, 3, 2], 3, min_ngram=1) == [3, 2]  # "2" did


def test_the_copied_tokens_take_rank_zero_and_siblings_stay_distinct() -> None:
    ranked = [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 0, 1]]
    plain = _one(PromptTokenProposer(), ranked, [], 3).candidates
    assert plain == ranked
    history = [2, 12, 6, 2]  # "2" was followed by 12 6 2: depth 1 guesses 12, depth 2 guesses 6, ...
    proposal = _one(LookupProposer(PromptTokenProposer()), ranked, history, 3)
    assert proposal.candidates is not None and proposal.copied == 3
    got = proposal.candidates
    assert got[0] == [12, 10, 11, 13]  # already a candidate: moved to the front, not repeated
    assert got[1] == [6, 14, 15, 16]  # new: in front, the last rank drops out
    assert got[2] == [2, 18, 19, 0]
    assert all(len(set(row)) == len(row) for row in got)
    # nothing to copy: the prompt tokens' candidates unchanged
    unchanged = _one(LookupProposer(PromptTokenProposer()), ranked, [3, 4], 3)
    assert unchanged.candidates == ranked
    assert unchanged.continuation == () and unchanged.copied == 0


def test_only_a_trusted_match_reaches_past_the_tree() -> None:
    ranked = [[10, 11, 12], [13, 14, 15]]
    lookup = LookupProposer(PromptTokenProposer(), chain_ngram=2)
    two_gram = [1, 2, 3, 4, 5, 6, 7, 1, 2]  # "1 2" occurred before: its continuation may reach past depth 2
    assert lookup_match(two_gram, 5).ngram == 2
    assert _one(lookup, ranked, two_gram, 5).continuation == (3, 4, 5, 6, 7)
    one_gram = [1, 2, 3, 4, 5, 6, 7, 9, 2]  # only "2" occurred before: the copy stays within the tree
    assert _one(lookup, ranked, one_gram, 5).continuation == (3, 4)
    # without prompt distributions (depth 0), a trusted match alone is proposed
    alone = _one(lookup, None, two_gram, 4)
    assert alone.candidates is None and alone.continuation == (3, 4, 5, 6)
    assert _one(lookup, None, one_gram, 4).continuation == ()


def test_bad_ngram_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="min_ngram"):
        LookupProposer(PromptTokenProposer(), max_ngram=2, min_ngram=3)
    with pytest.raises(ValueError, match="chain_ngram"):
        LookupProposer(PromptTokenProposer(), chain_ngram=0)
