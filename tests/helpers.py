"""Test helpers: varied prompts and proposers that make every guess right or every guess wrong."""

from __future__ import annotations

from ppdecode.proposers import Proposal, Ranked, RowProposer

PROMPTS = [
    "Write a haiku about rivers.",
    "Explain recursion to a ten-year-old.",
    "What is the capital of France, and why is it famous?",
    "Write a Python function that checks whether a string is a palindrome.",
    "List five tips for sleeping better.",
    "Translate 'Good morning, how are you?' into Spanish and French.",
    "Summarise the plot of Romeo and Juliet in three sentences.",
    "What is 17 times 23? Show your steps.",
    "Give me a short story about a robot who learns to paint.",
    "How does a binary search work?",
    "Write a SQL query that counts orders per customer.",
    "Why is the sky blue?",
    "Rewrite this sentence more formally: gonna grab food, brb.",
    "What are the differences between lists and tuples in Python?",
    "Describe the water cycle.",
    "Write a limerick about a cat.",
    "Explain what an HTTP 404 error means.",
    "Give three arguments for and against remote work.",
    "def quicksort(arr):",
    "Write a JavaScript function that debounces another function.",
]


class ReferenceProposer(RowProposer):
    """Proposes from a known greedy continuation ``reference`` of the prompt.

    ``right=True``: rank 0 at every depth is the true next token (an oracle: every guess on the
    rank-0 chain is accepted). ``right=False``: no candidate is ever the true token. With
    ``continuation=True`` the rank-0 guesses also continue past the tree, as far as the engine lets
    them reach, so the engine verifies them as a lookup chain.
    """

    def __init__(
        self,
        prompt_length: int,
        reference: list[int],
        vocab_size: int,
        right: bool,
        continuation: bool = False,
    ) -> None:
        self.prompt_length = prompt_length
        self.reference = reference
        self.vocab_size = vocab_size
        self.right = right
        self.continuation = continuation

    def _row(self, history: list[int], i: int, top_k: int) -> list[int]:
        position = len(history) - self.prompt_length + i  # index in the reference of the guessed token
        truth = self.reference[position] if position < len(self.reference) else -1
        filler = [t for t in range(top_k + 1) if t != truth][:top_k]
        return ([truth] + filler[: top_k - 1]) if self.right and truth >= 0 else filler

    def propose_row(self, ranked: Ranked | None, history: list[int], reach: int) -> Proposal:
        depth = len(ranked) if ranked else 0
        top_k = len(ranked[0]) if ranked else 1
        rows = [self._row(history, i, top_k) for i in range(depth)]
        candidates = rows if ranked else None
        if not self.continuation:
            return Proposal(candidates)
        ahead = [self._row(history, i, 1)[0] for i in range(max(reach, depth))]
        return Proposal(candidates, tuple(ahead))
