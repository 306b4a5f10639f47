"""Proposers: prompt lookup's continuation and how it joins the prompt tokens' candidates."""

from __future__ import annotations

import pytest
import torch

from ppdecode.proposers import LookupProposer, PromptTokenProposer, lookup_continuation


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
    logits = torch.full((3, 20), -10.0)
    for depth, ranked in enumerate([[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 0, 1]]):
        for rank, token in enumerate(ranked):
            logits[depth, token] = 5.0 - rank
    plain = PromptTokenProposer().candidates(logits, 4, [])
    assert plain.tolist() == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 0, 1]]
    history = [2, 12, 6, 2]  # "2" was followed by 12 6 2: depth 1 guesses 12, depth 2 guesses 6, ...
    got = LookupProposer(PromptTokenProposer()).candidates(logits, 4, history).tolist()
    assert got[0] == [12, 10, 11, 13]  # already a candidate: moved to the front, not repeated
    assert got[1] == [6, 14, 15, 16]  # new: in front, the last rank drops out
    assert got[2] == [2, 18, 19, 0]
    assert all(len(set(row)) == len(row) for row in got)
    # nothing to copy: the prompt tokens' candidates unchanged
    assert LookupProposer(PromptTokenProposer()).candidates(logits, 4, [3, 4]).tolist() == plain.tolist()


def test_bad_ngram_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="min_ngram"):
        LookupProposer(PromptTokenProposer(), max_ngram=2, min_ngram=3)
