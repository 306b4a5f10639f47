"""Proposers: where the guesses of a tree step come from."""

from ppdecode.proposers.base import Proposal, Proposer, Ranked
from ppdecode.proposers.lookup import LookupMatch, LookupProposer, lookup_continuation, lookup_match
from ppdecode.proposers.ppd import PromptTokenProposer

__all__ = [
    "LookupMatch",
    "LookupProposer",
    "PromptTokenProposer",
    "Proposal",
    "Proposer",
    "Ranked",
    "lookup_continuation",
    "lookup_match",
]
