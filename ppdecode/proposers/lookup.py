"""Prompt lookup joined to the prompt tokens' guesses: copy what followed the last n-gram before.

Answers often repeat their input (code, translation, summaries, rewrites). When the last ``n``
tokens of the history (prompt + committed tokens, the root last) occurred earlier, the tokens that
followed that earlier occurrence become the rank-0 candidate of each depth, and the prompt tokens'
own candidates move one rank down (a duplicate is moved, not repeated, so siblings stay distinct and
lossless sampling stays exact). The tree and the step's inputs are unchanged: the lookup costs no
forward work, only a scan of the history.
"""

from __future__ import annotations

import torch

from ppdecode.proposers.base import Proposer


def lookup_continuation(history: list[int], length: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Up to ``length`` tokens that followed the latest earlier occurrence of the history's last n-gram.

    The longest n from ``max_ngram`` down to ``min_ngram`` with an earlier occurrence wins; among
    occurrences of that n-gram, the latest one. Returns [] when nothing matches.
    """
    end = len(history)
    if end < 2:
        return []
    last = history[-1]
    # earlier occurrences of the last token, latest first (the final position is the pattern itself)
    occurrences = [i for i in range(end - 2, -1, -1) if history[i] == last]
    for n in range(min(max_ngram, end - 1), min_ngram - 1, -1):
        pattern = history[end - n :]
        for i in occurrences:
            if i >= n - 1 and history[i - n + 1 : i + 1] == pattern:
                return history[i + 1 : i + 1 + length]
    return []


class LookupProposer:
    """Wraps a proposer: the lookup continuation becomes rank 0 at each depth it reaches."""

    def __init__(self, inner: Proposer, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        self.inner = inner
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def candidates(self, prompt_logits: torch.Tensor, top_k: int, history: list[int]) -> torch.Tensor:
        candidates = self.inner.candidates(prompt_logits, top_k, history)  # [D, K]
        copied = lookup_continuation(history, candidates.shape[0], self.max_ngram, self.min_ngram)
        if not copied:
            return candidates
        rows = candidates.tolist()
        for depth, token in enumerate(copied):
            row = rows[depth]
            rows[depth] = [token, *(t for t in row if t != token)][:top_k]
        return torch.tensor(rows, dtype=candidates.dtype, device=candidates.device)
