"""Planning a row's step (METHOD §3, §6, §7): the tree for its depth, filled with the proposer's guesses.

The prompt tokens' ranked candidates (or a proposer's own) fill the tree's nodes; a continuation (a
trusted prompt-lookup match, a draft model's tokens) continues as a *chain* under the deepest rank-0
node that holds it. A step with a smaller
tree (after a chain, or at depth 0) has room for a longer chain: every step may feed the tree's largest
step plus ``lookup_chain`` inputs. Near the end of the row's room, the step falls back to vanilla. A
proposal may bring a tree of its own (``Proposal.tree``: a draft's sibling tree, for a target without
prompt tokens); its candidates fill that tree instead (``with_own_tree``).

A row whose text defeats the prompt tokens (their guesses are seldom accepted, so the tree's inputs
cost more than they earn on this device) *rests* its tree: it decodes root-only steps, with its copies
still verified as a chain, and tries the tree again after a rest that doubles while it keeps failing
(``TreeUse``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from ppdecode.proposers import MODEL, PPD, Proposal
from ppdecode.step import RowPlan
from ppdecode.tree.buffers import CHAIN_RANK, TreeBuffers, TreeSteps, build_buffers
from ppdecode.tree.spec import TreeNode, TreeSpec

if TYPE_CHECKING:
    from ppdecode.request import Request

# Vanilla decoding is the root-only tree without prompt slots: one token in, one token out. With a
# chain under its root it verifies a continuation alone (a draft model's, or prompt lookup's).
VANILLA_TREE = TreeSpec(num_prompt_tokens=1, top_k=(1,), trees=((TreeNode((0,), 0),),), root_slots=0)
VANILLA = build_buffers(VANILLA_TREE, 0)
MAX_STEP_INPUTS = 64  # a decode step's inputs per row; the cache keeps this much room past max_length
COPY_STEPS = TreeSteps(VANILLA_TREE)  # a resting row's steps: the root, and a chain where one is proposed


def reach(request: Request, trees: TreeSteps | None, fill: int | None = None) -> tuple[int, int] | None:
    """How far the row's guesses may go this step: (tree depth, chain room); None decodes vanilla.

    A step with a smaller tree (after a chain, or at depth 0) has room for a longer chain: every step
    may feed ``fill`` inputs (by default the tree's largest step; a resting row's root-only step, the
    largest step of the tree it rests) plus the row's chain room (``lookup_chain``, doubled after each
    chain accepted whole, up to ``max_lookup_chain``: a long verbatim copy is verified 16 at a time).
    """
    config = request.config
    if trees is None or not config.use_ppd:
        return None
    depth = len(request.ranked) if request.ranked else 0
    inputs = trees.by_depth[depth].num_inputs
    fill = trees.max_inputs if fill is None else fill
    room = min(request.chain_room + fill - inputs, MAX_STEP_INPUTS - inputs)
    return depth, room if request.chain_room else 0


@lru_cache(maxsize=256)
def own_steps(spec: TreeSpec) -> TreeSteps:
    """The steps of a proposer's own tree (``Proposal.tree``), built once per shape."""
    return TreeSteps(spec)


def with_own_tree(
    steps: TreeSteps | None, where: tuple[int, int] | None, proposal: Proposal | None
) -> tuple[TreeSteps | None, tuple[int, int] | None]:
    """A row's tree and reach once its proposal is known: where the proposal brings its own tree, its
    candidates fill every depth of that tree and the rest of the reach is room for the chain (a step
    that would pass ``MAX_STEP_INPUTS`` verifies the continuation alone, as a chain)."""
    if where is None or proposal is None or proposal.tree is None:
        return steps, where
    depth = proposal.tree.num_prompt_tokens
    room = max(0, sum(where) - depth)
    if 1 + sum(proposal.tree.top_k) + min(room, len(proposal.continuation) - depth) > MAX_STEP_INPUTS:
        return steps, where
    return own_steps(proposal.tree), (depth, room)


def next_chain_room(request: Request, plan: RowPlan, accepted: int) -> int:
    """The row's chain room after a step that accepted ``accepted`` nodes: doubled when its chain was
    accepted to the end, back to ``lookup_chain`` when the chain was cut short."""
    config, buffers = request.config, plan.buffers
    if not buffers.chain_length:
        return request.chain_room
    if accepted >= buffers.chain_at + buffers.chain_length:
        return min(config.max_lookup_chain, max(1, 2 * request.chain_room))
    return config.lookup_chain


def plan_row(
    request: Request,
    trees: TreeSteps | None,
    where: tuple[int, int] | None,
    proposal: Proposal | None,
    start: int,
    max_length: int,
    prefix: tuple[int, ...] = (),
) -> RowPlan:
    """The row's step at cache position ``start`` (``prefix``: context in front of the root).

    ``where`` is what ``reach`` said for the row (None: a vanilla step), ``proposal`` its guesses.
    """
    if trees is None or where is None or proposal is None:
        return RowPlan(start, (request.root,), VANILLA, prefix)
    depth, room = where
    chain_at, chain = lookup_chain(proposal, trees, depth, room)
    buffers: TreeBuffers = trees.buffers(depth, chain_at, len(chain))
    if start + len(prefix) + buffers.num_inputs > max_length:
        return RowPlan(start, (request.root,), VANILLA, prefix)  # no room left for a tree
    ranked = proposal.candidates or []
    tree_nodes = buffers.input_paths[1 : 1 + buffers.num_nodes - len(chain)]
    nodes = [ranked[len(path) - 1][path[-1]] for path in tree_nodes]
    origins = (MODEL, *(origin(path, proposal) for path in buffers.input_paths[1:]))
    return RowPlan(start, (request.root, *nodes, *chain), buffers, prefix, origins)


def origin(path: tuple[int, ...], proposal: Proposal) -> str:
    """Who guessed a node: the continuation's source (its token at rank 0, or the chain) or the
    prompt tokens."""
    continued = path[-1] == CHAIN_RANK or (path[-1] == 0 and len(path) <= proposal.copied)
    return proposal.source if continued else PPD


def lookup_chain(proposal: Proposal, trees: TreeSteps, depth: int, room: int) -> tuple[int, list[int]]:
    """Where the lookup chain hangs (a depth on the rank-0 path) and its tokens; [] for none.

    The chain continues the proposal's continuation below the deepest rank-0 node that holds it.
    """
    continuation = proposal.continuation
    if not room or not continuation:
        return 0, []
    ranked = [row[0] for row in proposal.candidates] if proposal.candidates else []
    chain_at = 0
    limit = min(trees.rank0_reach[depth], len(continuation))
    while chain_at < limit and ranked[chain_at] == continuation[chain_at]:
        chain_at += 1
    return chain_at, list(continuation[chain_at : chain_at + room])


# A row's tree use: the running means weigh the latest step by TREE_USE_WEIGHT (about the last ten
# steps that had the prompt tokens' guesses: a few unlucky steps in a row are common where the tree
# pays, and resting then loses its guesses); a rest starts at FIRST_REST steps and doubles up to
# LONGEST_REST while the tree keeps failing.
TREE_USE_WEIGHT = 0.1
FIRST_REST, LONGEST_REST = 4, 64


@dataclass
class TreeUse:
    """Whether the prompt tokens' guesses pay for their inputs in one row (METHOD §5, per row).

    A tree step costs ``step_ratio`` times a root-only step on this device (what the hardware profile
    predicts; the tree's meta carries it). In the row's recent steps that carried the prompt tokens'
    guesses, they added ``gain`` accepted tokens to the ``tokens`` committed per step; a root-only step
    would have committed ``tokens - gain`` for less. Where ``tokens / (tokens - gain) < step_ratio``
    the tree does not pay: the row rests for ``rest`` steps, then tries the tree again. A tree without
    a known ratio is always used.
    """

    gain: float  # running mean of the prompt tokens' accepted guesses per step that had some
    tokens: float  # running mean of the tokens committed by those steps (the bonus included)
    rest: int = 0  # root-only steps left before the tree is tried again
    next_rest: int = FIRST_REST

    @classmethod
    def expecting(cls, trees: TreeSteps | None) -> TreeUse:
        """Starts from what the tree expects (its meta's expected τ)."""
        tau = 1.0 if trees is None else float(trees.spec.meta.get("expected_tau", 1.5))
        return cls(tau - 1.0, tau)

    @property
    def resting(self) -> bool:
        return self.rest > 0

    def pays(self, step_ratio: float | None) -> bool:
        if step_ratio is None:
            return True
        return self.tokens >= step_ratio * max(self.tokens - self.gain, 1.0)

    def after_step(self, step_ratio: float | None, guessed: bool, gain: int, tokens: int) -> None:
        """After a step of a tree costing ``step_ratio``: ``guessed`` whether it carried the prompt
        tokens' guesses, ``gain`` how many of them were accepted, ``tokens`` what it committed."""
        if self.rest:
            self.rest -= 1
            return
        if not guessed:
            return
        self.gain += TREE_USE_WEIGHT * (gain - self.gain)
        self.tokens += TREE_USE_WEIGHT * (tokens - self.tokens)
        if self.pays(step_ratio):
            self.next_rest = FIRST_REST
        else:
            self.rest, self.next_rest = self.next_rest, min(2 * self.next_rest, LONGEST_REST)
