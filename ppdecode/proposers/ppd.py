"""Parallel Prompt Decoding's proposer: the top-k tokens of each prompt slot's distribution.

The top-k itself is taken in the step's one device transfer (``verify.batch_verdicts``), so the
proposer passes the ranked candidates on as they are.
"""

from __future__ import annotations

from ppdecode.proposers.base import Proposal, Ranked, RowProposer


class PromptTokenProposer(RowProposer):
    def propose_row(self, ranked: Ranked | None, history: list[int], reach: int) -> Proposal:
        return Proposal(ranked)
