"""Planning a row's step (METHOD §3, §6, §7): the tree for its depth, filled with the proposer's guesses.

The prompt tokens' ranked candidates (or a proposer's own) fill the tree's nodes; a continuation (a
trusted prompt-lookup match, a draft model's tokens) continues as a *chain* under the deepest rank-0
node that holds it. A step with a smaller
tree (after a chain, or at depth 0) has room for a longer chain: every step may feed the tree's largest
step plus ``lookup_chain`` inputs. Near the end of the row's room, the step falls back to vanilla.
"""

from __future__ import annotations

from ppdecode.proposers import MODEL, PPD, Proposal
from ppdecode.request import Request
from ppdecode.step import RowPlan
from ppdecode.tree.buffers import CHAIN_RANK, TreeBuffers, TreeSteps, build_buffers
from ppdecode.tree.spec import TreeNode, TreeSpec

# Vanilla decoding is the root-only tree without prompt slots: one token in, one token out. With a
# chain under its root it verifies a continuation alone (a draft model's, or prompt lookup's).
VANILLA_TREE = TreeSpec(num_prompt_tokens=1, top_k=(1,), trees=((TreeNode((0,), 0),),), root_slots=0)
VANILLA = build_buffers(VANILLA_TREE, 0)
MAX_STEP_INPUTS = 64  # a decode step's inputs per row; the cache keeps this much room past max_length


def reach(request: Request, trees: TreeSteps | None) -> tuple[int, int] | None:
    """How far the row's guesses may go this step: (tree depth, chain room); None decodes vanilla.

    A step with a smaller tree (after a chain, or at depth 0) has room for a longer chain: every step
    may feed the tree's largest step plus the row's chain room (``lookup_chain``, doubled after each
    chain accepted whole, up to ``max_lookup_chain``: a long verbatim copy is verified 16 at a time).
    """
    config = request.config
    if trees is None or not config.use_ppd:
        return None
    depth = len(request.ranked) if request.ranked else 0
    inputs = trees.by_depth[depth].num_inputs
    room = min(request.chain_room + trees.max_inputs - inputs, MAX_STEP_INPUTS - inputs)
    return depth, room if request.chain_room else 0


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
