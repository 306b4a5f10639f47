"""ppdecode: Parallel Prompt Decoding for HuggingFace causal language models.

from ppdecode import load
engine = load()                                   # embedded default model + its prompt tokens
for chunk in engine.stream("Explain recursion"):  # text as it is committed
    print(chunk.text, end="")
result = engine.generate("Write a haiku", temperature=0.0)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ppdecode.config import AcceptMode, GenerationConfig
from ppdecode.engine import Engine, GenerationResult, GenerationStats, StreamChunk
from ppdecode.models import DEFAULT_MODEL, LoadedModel, load_model
from ppdecode.prompt_tokens import PromptTokens, default_prompt_tokens
from ppdecode.tree.spec import DEFAULT_TREE, TreeSpec, load_tree

__all__ = [
    "AcceptMode",
    "Engine",
    "GenerationConfig",
    "GenerationResult",
    "GenerationStats",
    "LoadedModel",
    "PromptTokens",
    "StreamChunk",
    "TreeSpec",
    "load",
    "load_model",
]


def load(
    model: str = DEFAULT_MODEL,
    prompt_tokens: str | Path | None = "default",
    tree: str | Path | TreeSpec = DEFAULT_TREE,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> Engine:
    """An engine for ``model`` with its prompt tokens (``"default"``: the shipped ones; None: vanilla)."""
    base = load_model(model, device=device, dtype=dtype)
    tokens = None
    if prompt_tokens == "default":
        tokens = default_prompt_tokens(base)
    elif prompt_tokens is not None:
        tokens = PromptTokens.load(prompt_tokens, base)
    spec = tree if isinstance(tree, TreeSpec) else load_tree(tree)
    return Engine(base, tokens, spec if tokens is not None else None)
