"""A draft model's proposer (METHOD §6): a cheaper model with the target's tokenizer writes ahead.

The draft decodes in an ``Engine`` of its own, batched across the target's rows: one draft request
per target request. Before each target step the draft request is rewound to the target's history
(its cache keeps the prefix they share: the accepted draft tokens), then the draft engine steps
until every row's draft is its draft length long.

With prompt tokens and a tree of its own (``--draft-ppd``) the draft does PPD inside speculative
decoding:
- each draft forward writes several tokens, and its prompt tokens' best guesses past its last token
  go on the end of the draft; they count towards the draft length, so drafting stops sooner;
- its guesses survive the target's verdict. Prompt slots never see the root they guess past, so when
  the verdict keeps the context of a draft step and replaces its root (the target's bonus token
  instead of the draft's), that step's guesses hold for the new root; and where the target wrote
  further tokens there, the guesses past those hold too. The rewound draft starts from them: they are
  the next draft without a forward, or its next forward verifies them.

The draft decodes greedily, so its tokens are deterministic candidates: the target verifies them
with its own rules (greedy, or the lossless rule of METHOD §3), and output stays exact either way.
The draft's tokens take rank 0 of the inner proposer's candidates (the target's prompt tokens) and
go on past them as a chain. Draft length: fixed, or adaptive per row (longer after a fully accepted
draft, shorter after a rejection, as ``transformers`` assisted generation does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from ppdecode.config import GenerationConfig
from ppdecode.proposers.base import DRAFT, Proposal, Proposer, Ranked, RowContext, join_continuation
from ppdecode.proposers.ppd import PromptTokenProposer

if TYPE_CHECKING:
    from ppdecode.engine import Engine
    from ppdecode.models import LoadedModel


class DraftSchedule(str, Enum):
    """How a row's draft length moves (``transformers``' ``num_assistant_tokens_schedule``)."""

    ADAPTIVE = "adaptive"  # two longer after a draft accepted whole, one shorter otherwise
    FIXED = "fixed"  # the same length every step (the paper's setting)


def draft_schedule(value: DraftSchedule | str) -> DraftSchedule:
    """The schedule ``value`` names; an unknown one is refused with the choices."""
    try:
        return DraftSchedule(value)
    except ValueError:
        choices = ", ".join(s.value for s in DraftSchedule)
        raise ValueError(f"unknown draft schedule {value!r}: choose from {choices}") from None


def draft_engine(draft: LoadedModel, ppd: bool, tune: bool = False, **engine_options: Any) -> Engine:
    """The draft model's own engine: plain, or (``ppd``) with its prompt tokens and its tree (the tuned
    or shipped one) at every batch size. That tree is used even where the draft's profile found that
    no tree pays when the draft decodes alone: inside speculative decoding its guesses pay otherwise
    (they count towards the draft and survive the target's verdicts), and ``--draft-ppd`` asks for them."""
    from ppdecode.engine import Engine
    from ppdecode.prompt_tokens import default_prompt_tokens
    from ppdecode.tune.resolve import AUTO, resolve_tree

    if not ppd:
        return Engine(draft, **engine_options)
    tokens = default_prompt_tokens(draft)
    tree = resolve_tree(draft, tokens, AUTO, allow_tune=tune, progress=False)
    return Engine(draft, tokens, tree, **engine_options)


@dataclass
class DraftRow:
    draft_id: str  # the request in the draft engine
    length: int  # tokens to draft (written, then guessed) past the history at the next step
    done: bool = False  # the draft request ended (its context is full): no more drafts for the row
    # the draft's guesses past each root it wrote since the last rewind (and those the rewind handed
    # on), by the sequence length where they start (a draft with prompt tokens): the target's verdict
    # may keep the context they were made on and write other tokens from there
    guesses_at: dict[int, Ranked] = field(default_factory=dict)


class DraftProposer:
    """Guesses from a draft model decoding in ``engine``, joined to ``inner``'s candidates."""

    def __init__(
        self,
        engine: Engine,
        inner: Proposer | None = None,
        length: int = 4,
        schedule: DraftSchedule | str = DraftSchedule.ADAPTIVE,
        max_draft: int = 12,
    ) -> None:
        if not 1 <= length <= max_draft:
            raise ValueError(f"need 1 <= draft length <= max_draft, got {length} and {max_draft}")
        self.schedule = draft_schedule(schedule)
        self.engine = engine
        self.inner = inner or PromptTokenProposer()
        self.length = length
        self.max_draft = max_draft
        self._rows: dict[str, DraftRow] = {}  # target request id -> its draft
        self._config = GenerationConfig(
            max_new_tokens=engine.max_length, lookup=False, ignore_eos=True, chat=False
        )
        self.draft_steps = 0  # steps of the draft engine (its forwards)

    def propose(self, rows: Sequence[RowContext]) -> list[Proposal]:
        inner = self.inner.propose(rows)
        wanted: list[tuple[int, DraftRow, int]] = []  # (row, its draft, tokens wanted past the history)
        for i, row in enumerate(rows):
            draft = self._sync(row) if row.reach > 0 else None
            if draft is not None:
                wanted.append((i, draft, min(draft.length, row.reach)))
        by_id = {draft.draft_id: draft for _, draft, _ in wanted}
        while any(not d.done and len(self._draft(d, rows[i])) < want for i, d, want in wanted):
            for out in self.engine.step():
                if out.finished and out.request_id in by_id:
                    by_id[out.request_id].done = True
            self.draft_steps += 1
            for _, draft, _ in wanted:
                self._keep_guesses(draft)
        proposals = list(inner)
        for i, draft, _ in wanted:
            if not draft.done:
                proposals[i] = self._proposal(self._draft(draft, rows[i]), inner[i])
        return proposals

    @staticmethod
    def _proposal(ranked: Ranked, inner: Proposal) -> Proposal:
        """The draft's tokens take rank 0 of the inner proposer's candidates and go on past them as a
        chain. Where the inner proposer has no candidates (a target without prompt tokens) and the
        draft's prompt tokens ranked their guesses, the draft brings its own tree: the target verifies
        their top-k as well, as it verifies a PPD tree."""
        from ppdecode.tree.spec import sibling_tree  # the command line's help loads no torch

        continuation = [row[0] for row in ranked]
        if inner.candidates is None and any(len(row) > 1 for row in ranked):
            tree = sibling_tree(tuple(len(row) for row in ranked))
            return Proposal(ranked, tuple(continuation), len(ranked), DRAFT, tree)
        return join_continuation(inner.candidates, continuation, DRAFT)

    def _sync(self, row: RowContext) -> DraftRow | None:
        """The row's draft request, rewound to the row's history (made on first sight)."""
        draft = self._rows.get(row.request_id)
        if draft is None:
            draft_id = self.engine.add_request(list(row.history), self._config)
            draft = self._rows[row.request_id] = DraftRow(draft_id, self.length)
        elif not draft.done and (wrote := self.engine.sequence(draft.draft_id)) != row.history:
            # the latest guesses made on a context the history keeps; those past what it has written
            # since (the target's tokens where the draft's root and guesses were) are the next draft's
            length = len(row.history)
            kept = None
            for n, guesses in sorted(draft.guesses_at.items(), reverse=True):
                if n <= length < n + len(guesses) and wrote[: n - 1] == row.history[: n - 1]:
                    kept = guesses[length - n :]
                    break
            self.engine.rewind(draft.draft_id, row.history, kept)
            draft.guesses_at.clear()
            if kept:
                draft.guesses_at[length] = kept
        return None if draft.done else draft

    def _keep_guesses(self, draft: DraftRow) -> None:
        """Keep the draft's guesses past the root it just wrote, for a verdict that keeps the context
        before that root."""
        if draft.done:
            return
        guesses = self.engine.guesses(draft.draft_id)
        if guesses is not None:
            draft.guesses_at[len(self.engine.sequence(draft.draft_id))] = guesses

    def _draft(self, draft: DraftRow, row: RowContext) -> Ranked:
        """The row's draft, ranked candidates a depth, cut to the reach: what the draft wrote past the
        row's history (one candidate a depth) and, from a draft with prompt tokens, their ranked guesses
        past that (written by its last forward, at no further cost)."""
        tokens = self.engine.sequence(draft.draft_id)[len(row.history) :]
        guesses = self.engine.guesses(draft.draft_id) if len(tokens) < row.reach else None
        # as many ranks a depth as the draft's own tree verifies (what its prompt tokens guess well enough)
        widths = self.engine.tree.top_k if self.engine.tree is not None else ()
        ranked = [list(ranks[:width]) for ranks, width in zip(guesses or (), widths, strict=False)]
        return ([[token] for token in tokens] + ranked)[: row.reach]

    def accepted(self, request_id: str, history: list[int], accepted: int) -> None:
        draft = self._rows.get(request_id)
        if draft is not None and self.schedule is DraftSchedule.ADAPTIVE:
            grown = draft.length + 2 if accepted >= draft.length else draft.length - 1
            draft.length = max(1, min(self.max_draft, grown))
        self.inner.accepted(request_id, history, accepted)

    def reset(self, request_id: str) -> None:
        draft = self._rows.pop(request_id, None)
        if draft is not None and not draft.done:
            self.engine.cancel(draft.draft_id)
        self.inner.reset(request_id)
