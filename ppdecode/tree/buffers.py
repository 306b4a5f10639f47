"""Tree buffers: a pure, cached function from (TreeSpec, depth) to the tensors one decoding step needs.

Input layout of a step (``num_inputs`` = T):

    [ root | candidate nodes (sorted by depth, then ranks) | chain | prompt slots, grouped by owner ]
      0      1 .. num_nodes - chain_length                          1 + num_nodes .. T - 1

"Token inputs" are the root and the candidate nodes (indices 0..num_nodes); they carry token
embeddings. An optional *lookup chain* of ``chain_length`` nodes hangs under the rank-0 node at depth
``chain_at`` (the root when 0): guesses copied by prompt lookup that reach past the tree. Its nodes
carry no slots and take their tokens from the lookup, not from the candidates.
Slot inputs carry the trained embedding of prompt token k (``slot_prompt_index``) and ensemble
member e (``slot_member``); with V ensemble members a slot is V inputs whose logits are averaged.
Attention inside the tree (METHOD §3): a node sees its ancestors and itself; slot j of node c sees c's
ancestors, c, and slots 1..j of c (of its own ensemble member). Everything sees the committed cache.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import lru_cache

import torch

from ppdecode.tree.spec import TreeSpec


@dataclass(frozen=True)
class TreeBuffers:
    """Everything static about one step at one depth. Index tensors are int64 on the CPU."""

    depth: int
    num_nodes: int  # candidate nodes, root excluded, chain included
    num_inputs: int  # T = 1 + num_nodes + number of slots
    # [num_nodes - chain_length] index of each tree node into the flattened candidates [depth * max_top_k]
    candidate_index: torch.Tensor
    slot_prompt_index: torch.Tensor  # [num_slot_inputs] which prompt token (0..N-1) a slot input embeds
    slot_member: torch.Tensor  # [num_slot_inputs] which ensemble member (0..V-1) a slot input embeds
    position_offsets: torch.Tensor  # [T] offset from the committed length: node depth, + j for slot j
    attend: torch.Tensor  # [T, T] bool, True where row may attend to column
    parent: torch.Tensor  # [1 + num_nodes] input index of each token input's parent (root: 0)
    # [num_paths, max(depth, chain_at + chain_length, 1)] node input indices root-to-leaf, padded with T
    paths: torch.Tensor
    path_rows: tuple[tuple[int, ...], ...]  # the same paths on the host, unpadded
    slot_inputs: (
        torch.Tensor
    )  # [1 + num_nodes, N, V] input index of slot j, member e of a token input; -1: none
    node_slots: tuple[int, ...]  # [1 + num_nodes] number of slots of each token input
    children: tuple[tuple[int, ...], ...]  # [1 + num_nodes] child input indices in rank order
    # host-side views for planning and verifying a step without device round trips:
    input_paths: tuple[tuple[int, ...], ...] = ()  # [1 + num_nodes] rank path of each token input
    # member input indices of each (owner, slot j), owners in input order, j ascending
    slot_groups: tuple[tuple[int, ...], ...] = ()
    first_group: tuple[int, ...] = ()  # [1 + num_nodes] index in slot_groups of the owner's slot 1
    chain_at: int = 0  # depth of the rank-0 node the lookup chain hangs under
    chain_length: int = 0  # chain nodes: the last ``chain_length`` candidate nodes

    def to(self, device: torch.device) -> TreeBuffers:
        """The same buffers with every tensor on ``device`` (done once per engine, not per step)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


CHAIN_RANK = -1  # the rank in a chain node's path: chain nodes follow the lookup, not a ranking


def rank0_reach(spec: TreeSpec, depth: int) -> int:
    """Depth of the deepest node of the tree's rank-0 path (0, 0, ...) at this depth (0: the root)."""
    paths = {node.path for node in spec.tree(depth)}
    reach = 0
    while (0,) * (reach + 1) in paths:
        reach += 1
    return reach


@lru_cache(maxsize=256)
def build_buffers(
    spec: TreeSpec, depth: int, ensemble: int = 1, chain_at: int = 0, chain_length: int = 0
) -> TreeBuffers:
    """Build the buffers of the tree used when ``depth`` prompt distributions are available.

    ``chain_length`` > 0 adds a lookup chain under the rank-0 node at depth ``chain_at``.
    """
    if not 0 <= depth <= spec.num_prompt_tokens:
        raise ValueError(f"depth must be in 0..{spec.num_prompt_tokens}, got {depth}")
    if chain_length < 0 or not 0 <= chain_at <= rank0_reach(spec, depth):
        raise ValueError(
            f"a lookup chain hangs under a rank-0 node at depth 0..{rank0_reach(spec, depth)} "
            f"and has a length >= 0; got depth {chain_at}, length {chain_length}"
        )
    n = spec.num_prompt_tokens
    nodes = sorted(spec.tree(depth), key=lambda node: (len(node.path), node.path))
    chain = [(0,) * chain_at + (CHAIN_RANK,) * i for i in range(1, chain_length + 1)]
    paths: list[tuple[int, ...]] = [()] + [node.path for node in nodes] + chain
    slots: list[int] = [spec.root_slots] + [node.slots for node in nodes] + [0] * chain_length
    token_index = {path: i for i, path in enumerate(paths)}
    num_tokens = len(paths)

    # Slot inputs follow the token inputs, grouped by owner and ensemble member, slot 1 first.
    slot_owner: list[int] = []
    slot_number: list[int] = []  # 1-based slot number j
    slot_member: list[int] = []
    for owner, count in enumerate(slots):
        for member in range(ensemble):
            for j in range(1, count + 1):
                slot_owner.append(owner)
                slot_number.append(j)
                slot_member.append(member)
    num_inputs = num_tokens + len(slot_owner)

    ancestors: list[list[int]] = []  # token input -> token inputs it sees (ancestors and itself)
    for path in paths:
        ancestors.append([token_index[path[:i]] for i in range(len(path) + 1)])

    attend = torch.zeros(num_inputs, num_inputs, dtype=torch.bool)
    offsets = torch.zeros(num_inputs, dtype=torch.long)
    for i, path in enumerate(paths):
        attend[i, ancestors[i]] = True
        offsets[i] = len(path)
    slot_inputs = torch.full((num_tokens, n, ensemble), -1, dtype=torch.long)
    for s, (owner, j, member) in enumerate(zip(slot_owner, slot_number, slot_member, strict=True)):
        row = num_tokens + s
        attend[row, ancestors[owner]] = True
        first_slot = row - (j - 1)
        attend[row, first_slot : row + 1] = True
        offsets[row] = len(paths[owner]) + j
        slot_inputs[owner, j - 1, member] = row

    parent = torch.zeros(num_tokens, dtype=torch.long)
    children: list[list[int]] = [[] for _ in range(num_tokens)]
    for i, path in enumerate(paths[1:], start=1):
        parent[i] = token_index[path[:-1]]
        children[int(parent[i])].append(i)

    k_max = spec.max_top_k
    candidate_index = torch.tensor(
        [(len(path) - 1) * k_max + path[-1] for path in paths[1 : len(paths) - chain_length]],
        dtype=torch.long,
    )
    slot_groups: list[tuple[int, ...]] = []
    first_group = [-1] * num_tokens
    for owner in range(num_tokens):
        if slots[owner]:
            first_group[owner] = len(slot_groups)
        for j in range(slots[owner]):
            slot_groups.append(tuple(int(i) for i in slot_inputs[owner, j].tolist()))
    leaves = [i for i in range(1, num_tokens) if not children[i]]
    width = max(depth, chain_at + chain_length, 1)
    path_rows = [ancestors[leaf][1:] + [num_inputs] * (width - len(paths[leaf])) for leaf in leaves]
    return TreeBuffers(
        depth=depth,
        num_nodes=num_tokens - 1,
        num_inputs=num_inputs,
        candidate_index=candidate_index,
        slot_prompt_index=torch.tensor([j - 1 for j in slot_number], dtype=torch.long),
        slot_member=torch.tensor(slot_member, dtype=torch.long),
        position_offsets=offsets,
        attend=attend,
        parent=parent,
        paths=torch.tensor(path_rows, dtype=torch.long).reshape(len(path_rows), width),
        path_rows=tuple(tuple(ancestors[leaf][1:]) for leaf in leaves),
        slot_inputs=slot_inputs,
        node_slots=tuple(slots),
        children=tuple(tuple(c) for c in children),
        input_paths=tuple(paths),
        slot_groups=tuple(slot_groups),
        first_group=tuple(first_group),
        chain_at=chain_at,
        chain_length=chain_length,
    )


class TreeSteps:
    """The buffers one tree spec decodes with: one per depth, and per lookup chain shape on demand."""

    def __init__(self, spec: TreeSpec, ensemble: int = 1) -> None:
        self.spec = spec
        self.ensemble = ensemble
        depths = range(spec.num_prompt_tokens + 1)
        self.by_depth = [build_buffers(spec, depth, ensemble) for depth in depths]
        self.rank0_reach = [rank0_reach(spec, depth) for depth in depths]  # how deep rank 0 goes
        self.max_inputs = max(b.num_inputs for b in self.by_depth)  # the largest step of the tree
        self._chains: dict[tuple[int, int, int], TreeBuffers] = {}  # (depth, chain_at, length)
        ratio = spec.meta.get("step_ratio")  # a step's cost over a root-only step here, where tuned
        self.step_ratio: float | None = None if ratio is None else float(ratio)

    def buffers(self, depth: int, chain_at: int = 0, chain_length: int = 0) -> TreeBuffers:
        if not chain_length:
            return self.by_depth[depth]
        key = (depth, chain_at, chain_length)
        if key not in self._chains:
            self._chains[key] = build_buffers(self.spec, depth, self.ensemble, chain_at, chain_length)
        return self._chains[key]
