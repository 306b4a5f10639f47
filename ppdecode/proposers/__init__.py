"""Proposers: where the guesses of a step come from."""

from ppdecode.proposers.base import (
    DRAFT,
    LOOKUP,
    MODEL,
    PPD,
    Proposal,
    Proposer,
    Ranked,
    RowContext,
    RowProposer,
    join_continuation,
)
from ppdecode.proposers.lookup import LookupMatch, LookupProposer, lookup_continuation, lookup_match
from ppdecode.proposers.ppd import PromptTokenProposer

__all__ = [
    "DRAFT",
    "LOOKUP",
    "MODEL",
    "PPD",
    "LookupMatch",
    "LookupProposer",
    "PromptTokenProposer",
    "Proposal",
    "Proposer",
    "Ranked",
    "RowContext",
    "RowProposer",
    "join_continuation",
    "lookup_continuation",
    "lookup_match",
]
