"""Tree specs (JSON + validation), their per-depth buffers, and the builder that chooses them."""

from ppdecode.tree.buffers import TreeBuffers, build_buffers
from ppdecode.tree.spec import TreeNode, TreeSpec, load_tree

__all__ = ["TreeBuffers", "TreeNode", "TreeSpec", "build_buffers", "load_tree"]
