"""Planning a row's step (METHOD §3, §7): the tree for its depth, filled with the proposer's guesses.

The prompt tokens' ranked candidates (or a proposer's own) fill the tree's nodes; a trusted prompt-lookup
match continues as a *lookup chain* under the deepest rank-0 node that holds it. A step with a smaller
tree (after a chain, or at depth 0) has room for a longer chain: every step may feed the tree's largest
step plus ``lookup_chain`` inputs. Near the end of the row's room, the step falls back to vanilla.
"""

from __future__ import annotations

from ppdecode.proposers import Proposal, Proposer
from ppdecode.request import LOOKUP, MODEL, PPD, Request
from ppdecode.step import RowPlan
from ppdecode.tree.buffers import CHAIN_RANK, TreeBuffers, TreeSteps, build_buffers
from ppdecode.tree.spec import TreeNode, TreeSpec

# Vanilla decoding is the root-only tree without prompt slots: one token in, one token out.
VANILLA_TREE = TreeSpec(num_prompt_tokens=1, top_k=(1,), trees=((TreeNode((0,), 0),),), root_slots=0)
VANILLA = build_buffers(VANILLA_TREE, 0)
MAX_STEP_INPUTS = 64  # a decode step's inputs per row; the cache keeps this much room past max_length


def plan_row(
    request: Request,
    trees: TreeSteps | None,
    proposer: Proposer,
    start: int,
    max_length: int,
    prefix: tuple[int, ...] = (),
) -> RowPlan:
    """The row's step at cache position ``start`` (``prefix``: the prefill's context in front)."""
    config = request.config
    if trees is None or not config.use_ppd:
        return RowPlan(start, (request.root,), VANILLA, prefix)
    depth = len(request.ranked) if request.ranked else 0
    room = 0
    if config.lookup and config.lookup_chain:
        # a step with a smaller tree (after a chain, or at depth 0) has room for a longer copy
        room = config.lookup_chain + trees.max_inputs - trees.by_depth[depth].num_inputs
        room = min(room, MAX_STEP_INPUTS - trees.by_depth[depth].num_inputs)
    proposal = Proposal(request.ranked)
    if depth or room:
        proposal = proposer.propose(request.ranked, request.history, depth + room)
    chain_at, chain = lookup_chain(proposal, trees, depth, room)
    buffers: TreeBuffers = trees.buffers(depth, chain_at, len(chain))
    if start + len(prefix) + buffers.num_inputs > max_length:
        return RowPlan(start, (request.root,), VANILLA, prefix)  # no room left for a tree
    ranked = proposal.candidates or []
    tree_nodes = buffers.input_paths[1 : 1 + buffers.num_nodes - len(chain)]
    nodes = [ranked[len(path) - 1][path[-1]] for path in tree_nodes]
    origins = (MODEL, *(origin(path, proposal.copied) for path in buffers.input_paths[1:]))
    return RowPlan(start, (request.root, *nodes, *chain), buffers, prefix, origins)


def origin(path: tuple[int, ...], copied: int) -> str:
    """Who guessed a node: lookup (its copy at rank 0, or the chain) or the prompt tokens."""
    return LOOKUP if path[-1] == CHAIN_RANK or (path[-1] == 0 and len(path) <= copied) else PPD


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
