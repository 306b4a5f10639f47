"""Tree specs: which candidate paths a decoding step verifies, and how many prompt slots each node carries.

A *path* is a tuple of ranks, e.g. ``(0, 2)`` = rank 0 of prompt token 1, then rank 2 of prompt token 2.
Because the tree is *dynamic* (METHOD §3), a spec holds one tree per depth d = 1..N: the tree used when
the last accepted node carried d prompt slots, so that d prompt-token distributions are available.
The root is implicit in every tree and carries ``root_slots`` prompt slots (N by default).

JSON form::

    {"num_prompt_tokens": 3, "top_k": [10, 10, 10],
     "trees": {"1": [{"path": [0], "slots": 3}, ...], "2": [...], "3": [...]},
     "meta": {"expected_tau": 1.8}}
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_TREE = "default"


@dataclass(frozen=True)
class TreeNode:
    """One candidate node: its rank path from the root and the prompt slots attached to it."""

    path: tuple[int, ...]
    slots: int


@dataclass(frozen=True)
class TreeSpec:
    """A validated dynamic sparse tree (one tree per available depth d = 1..N)."""

    num_prompt_tokens: int
    top_k: tuple[int, ...]
    trees: tuple[tuple[TreeNode, ...], ...]  # trees[d - 1] is the tree for depth d
    root_slots: int = -1  # -1 means N
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        n = self.num_prompt_tokens
        if self.root_slots == -1:
            object.__setattr__(self, "root_slots", n)
        if n < 1:
            raise ValueError(f"tree spec: num_prompt_tokens must be >= 1, got {n}")
        if len(self.top_k) != n:
            raise ValueError(
                f"tree spec: top_k needs one entry per prompt token ({n}), got {len(self.top_k)}"
            )
        if any(k < 1 for k in self.top_k):
            raise ValueError(f"tree spec: every top_k must be >= 1, got {list(self.top_k)}")
        if not 0 <= self.root_slots <= n:
            raise ValueError(f"tree spec: root_slots must be in 0..{n}, got {self.root_slots}")
        if len(self.trees) != n:
            raise ValueError(f"tree spec: needs one tree for each depth 1..{n}, got {len(self.trees)} trees")
        for depth, nodes in enumerate(self.trees, start=1):
            _validate_tree(nodes, depth, n, self.top_k)

    @property
    def max_top_k(self) -> int:
        return max(self.top_k)

    def tree(self, depth: int) -> tuple[TreeNode, ...]:
        """Nodes of the tree used when ``depth`` prompt distributions are available (0 = root only)."""
        if depth == 0:
            return ()
        return self.trees[depth - 1]

    def input_size(self, depth: int) -> int:
        """Tokens fed to the model in one step at this depth: root, its slots, nodes, their slots."""
        nodes = self.tree(depth)
        return 1 + self.root_slots + len(nodes) + sum(node.slots for node in nodes)

    # ---- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "num_prompt_tokens": self.num_prompt_tokens,
            "top_k": list(self.top_k),
            "root_slots": self.root_slots,
            "trees": {
                str(depth): [{"path": list(n.path), "slots": n.slots} for n in nodes]
                for depth, nodes in enumerate(self.trees, start=1)
            },
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "tree spec") -> TreeSpec:
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        missing = [key for key in ("num_prompt_tokens", "top_k", "trees") if key not in data]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}")
        n = data["num_prompt_tokens"]
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{source}: num_prompt_tokens must be an integer >= 1, got {n!r}")
        raw_trees = data["trees"]
        if not isinstance(raw_trees, dict):
            raise ValueError(f'{source}: "trees" must map each depth "1".."{n}" to a list of nodes')
        expected = {str(d) for d in range(1, n + 1)}
        if set(raw_trees) != expected:
            raise ValueError(
                f"{source}: trees must be given for depths {sorted(expected)}, got {sorted(raw_trees)}"
            )
        trees = []
        for depth in range(1, n + 1):
            raw_nodes = raw_trees[str(depth)]
            if not isinstance(raw_nodes, list):
                raise ValueError(f"{source}: tree for depth {depth} must be a list of nodes")
            nodes = []
            for i, raw in enumerate(raw_nodes):
                if not isinstance(raw, dict) or "path" not in raw or "slots" not in raw:
                    raise ValueError(
                        f'{source}: node {i} of depth {depth} must be {{"path": [...], "slots": k}}'
                    )
                path, slots = raw["path"], raw["slots"]
                if not isinstance(path, list) or not all(isinstance(r, int) for r in path):
                    raise ValueError(f"{source}: node {i} of depth {depth}: path must be a list of ints")
                if not isinstance(slots, int):
                    raise ValueError(f"{source}: node {i} of depth {depth}: slots must be an int")
                nodes.append(TreeNode(tuple(path), slots))
            trees.append(tuple(nodes))
        top_k = data["top_k"]
        if not isinstance(top_k, list) or not all(isinstance(k, int) for k in top_k):
            raise ValueError(f"{source}: top_k must be a list of ints")
        try:
            return cls(
                num_prompt_tokens=n,
                top_k=tuple(top_k),
                trees=tuple(trees),
                root_slots=int(data.get("root_slots", -1)),
                meta=dict(data.get("meta") or {}),
            )
        except ValueError as err:
            raise ValueError(f"{source}: {err}".replace("tree spec: ", "")) from None

    @classmethod
    def load(cls, path: str | Path) -> TreeSpec:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"tree spec {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"tree spec {path} is not valid JSON: {err}") from None
        return cls.from_dict(data, source=f"tree spec {path}")

    def save(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.to_dict())


def _validate_tree(nodes: tuple[TreeNode, ...], depth: int, n: int, top_k: tuple[int, ...]) -> None:
    where = f"tree spec: tree for depth {depth}"
    if not nodes:
        raise ValueError(f"{where} is empty; give it at least the path [0]")
    seen: set[tuple[int, ...]] = set()
    for node in nodes:
        if not node.path:
            raise ValueError(f"{where}: the root is implicit; remove the node with an empty path")
        if len(node.path) > depth:
            raise ValueError(
                f"{where}: path {list(node.path)} is longer than the {depth} prompt distributions available"
            )
        for i, rank in enumerate(node.path):
            if not 0 <= rank < top_k[i]:
                raise ValueError(
                    f"{where}: path {list(node.path)} uses rank {rank} at position {i + 1}, "
                    f"outside 0..{top_k[i] - 1} (top_k[{i}] = {top_k[i]})"
                )
        if not 0 <= node.slots <= n:
            raise ValueError(f"{where}: path {list(node.path)} has {node.slots} slots, outside 0..{n}")
        if node.path in seen:
            raise ValueError(f"{where}: path {list(node.path)} appears twice")
        seen.add(node.path)
    for node in nodes:
        if len(node.path) > 1 and node.path[:-1] not in seen:
            raise ValueError(
                f"{where} is not prefix-closed: {list(node.path)} has no parent {list(node.path[:-1])}"
            )


@lru_cache(maxsize=256)
def sibling_tree(widths: tuple[int, ...]) -> TreeSpec:
    """A tree for a proposer's own ranked candidates, without prompt slots: the rank-0 path, and at
    each depth i the siblings of its node (ranks 1..widths[i-1] - 1). A draft with prompt tokens
    proposes its tokens this way: what it wrote (one candidate a depth), then its prompt tokens' top-k
    past that; the target verifies them as it verifies a PPD tree (METHOD §3)."""
    nodes = tuple(TreeNode((0,) * i + (rank,), 0) for i, width in enumerate(widths) for rank in range(width))
    trees = tuple(
        tuple(node for node in nodes if len(node.path) <= depth) for depth in range(1, len(widths) + 1)
    )
    return TreeSpec(num_prompt_tokens=len(widths), top_k=widths, trees=trees, root_slots=0)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON next to ``path`` and rename it into place, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def packaged_tree_path(name: str) -> Path:
    return Path(str(resources.files("ppdecode.data").joinpath("trees", f"{name}.json")))


def load_tree(name_or_path: str | Path) -> TreeSpec:
    """A tree spec from a JSON path or the name of a tree shipped with the package."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        return TreeSpec.load(path)
    packaged = packaged_tree_path(str(name_or_path))
    if not packaged.is_file():
        raise ValueError(
            f"unknown tree {str(name_or_path)!r}: give a path to a tree JSON file "
            f"or the name of a packaged tree such as {DEFAULT_TREE!r}"
        )
    return TreeSpec.load(packaged)
