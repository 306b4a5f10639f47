"""Proposers: where the candidate tokens of a tree step come from."""

from ppdecode.proposers.base import Proposer
from ppdecode.proposers.lookup import LookupProposer, lookup_continuation
from ppdecode.proposers.ppd import PromptTokenProposer

__all__ = ["LookupProposer", "PromptTokenProposer", "Proposer", "lookup_continuation"]
