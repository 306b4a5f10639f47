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
from ppdecode.tree.spec import TreeSpec

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
    tree: str | Path | TreeSpec = "auto",
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    tune: bool = True,
) -> Engine:
    """An engine for ``model`` with its prompt tokens (``"default"``: the shipped ones; None: vanilla).

    ``tree="auto"`` takes the tree tuned for this device (a stored hardware profile, else the tree
    shipped for this model and device type, else a quick tune unless ``tune=False``); any other value
    is a tree JSON path, a packaged tree name or a hardware profile.
    """
    from ppdecode.tune.resolve import resolve_tree

    base = load_model(model, device=device, dtype=dtype)
    tokens = None
    if prompt_tokens == "default":
        tokens = default_prompt_tokens(base)
    elif prompt_tokens is not None:
        tokens = PromptTokens.load(prompt_tokens, base)
    if tokens is None:
        return Engine(base)
    return Engine(base, tokens, resolve_tree(base, tokens, tree, allow_tune=tune))
