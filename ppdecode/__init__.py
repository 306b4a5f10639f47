"""ppdecode: Parallel Prompt Decoding for HuggingFace causal language models.

from ppdecode import load
engine = load()                                   # embedded default model + its prompt tokens
for chunk in engine.stream("Explain recursion"):  # text as it is committed
    print(chunk.text, end="")
result = engine.generate("Write a haiku", temperature=0.0)
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppdecode.embedded import DEFAULT_MODEL

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    from ppdecode.config import AcceptMode, GenerationConfig
    from ppdecode.engine import Engine, GenerationResult, GenerationStats, StreamChunk
    from ppdecode.models import LoadedModel, load_model
    from ppdecode.prompt_tokens import PromptTokens
    from ppdecode.proposers.draft import DraftProposer
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
    "draft_proposers",
    "load",
    "load_model",
    "wrap",
]

# Public names and their modules, imported on first use (PEP 562): `import ppdecode` and the `ppd`
# command line (its --help) stay free of torch and transformers until a model is needed.
_LAZY = {
    "AcceptMode": "ppdecode.config",
    "GenerationConfig": "ppdecode.config",
    "Engine": "ppdecode.engine",
    "GenerationResult": "ppdecode.engine",
    "GenerationStats": "ppdecode.engine",
    "StreamChunk": "ppdecode.engine",
    "LoadedModel": "ppdecode.models",
    "load_model": "ppdecode.models",
    "PromptTokens": "ppdecode.prompt_tokens",
    "TreeSpec": "ppdecode.tree.spec",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def load(
    model: str = DEFAULT_MODEL,
    prompt_tokens: str | Path | None = "default",
    tree: str | Path | TreeSpec = "auto",
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    tune: bool = True,
    draft: str | None = None,
    draft_ppd: bool = False,
    draft_length: int = 4,
    draft_schedule: str = "adaptive",
    pack: bool = True,
    **engine_options: Any,
) -> Engine:
    """An engine for ``model`` with its prompt tokens (None: vanilla decoding).

    ``prompt_tokens="default"`` takes the tokens ``ppd prepare`` registered for this model, else the
    shipped ones. ``tree="auto"`` takes the tree tuned for this device (a stored hardware profile, else
    the tree prepared or shipped for this model and device type, else a quick tune unless
    ``tune=False``); any other value
    is a tree JSON path, a packaged tree name or a hardware profile. ``engine_options`` go to
    ``Engine`` (``max_batch``, ``max_length``, ``cache_memory``, ``prefill_chunk``).

    ``draft``: speculative decoding with a draft model of the same tokenizer (a model name, directory
    or .gguf; "default": the model's demonstration draft), whose tokens join the prompt tokens' tree
    and prompt lookup (alone with ``prompt_tokens=None`` and ``lookup=False`` in the config);
    ``draft_ppd`` lets the draft write with its own prompt tokens; ``draft_length`` is its draft
    length, where ``draft_schedule="adaptive"`` starts it (``"fixed"``: every step).

    ``pack``: on a CPU, the linear layers are prepacked for its matrix kernels (``ppdecode.kernels``;
    faster, same memory, no backward): the model is for decoding only.
    """
    from ppdecode.kernels import pack_linears
    from ppdecode.models import load_model

    base = load_model(model, device=device, dtype=dtype)
    if pack:
        pack_linears(base)
    if draft is not None:
        engine_options["draft"] = _draft(
            base, draft, draft_ppd, draft_length, draft_schedule, tune, pack, engine_options
        )
    return _engine(base, prompt_tokens, tree, tune, engine_options)


def _draft(
    base: LoadedModel,
    draft: str,
    ppd: bool,
    length: int,
    schedule: str,
    tune: bool,
    pack: bool,
    engine_options: dict[str, Any],
) -> Any:
    """The draft proposer: the draft model in an engine of its own (with its prompt tokens if ``ppd``)."""
    options = {k: v for k, v in engine_options.items() if k in ("max_batch", "max_length")}
    return draft_proposers(base, draft, ppd, length, tune, pack, schedule, **options)()


def draft_proposers(
    base: LoadedModel,
    draft: str,
    ppd: bool = False,
    length: int = 4,
    tune: bool = True,
    pack: bool = True,
    schedule: str = "adaptive",
    **engine_options: Any,
) -> Callable[[], DraftProposer]:
    """A maker of draft proposers for ``base``: the draft model ``draft`` names is resolved (and packed)
    once, and every call gives a proposer with an engine of its own on it (``ppd``: with the draft's
    prompt tokens; ``length`` and ``schedule`` as in ``DraftProposer``). ``ppd tune --draft`` confirms
    its trees with one per decoding engine."""
    from ppdecode.draft_model import resolve_draft
    from ppdecode.kernels import pack_linears
    from ppdecode.proposers.draft import DraftProposer, draft_engine, draft_schedule

    draft_schedule(schedule)  # an unknown schedule is refused before the draft model is loaded
    draft_base = resolve_draft(base, draft)
    if pack:
        pack_linears(draft_base)

    def make() -> DraftProposer:
        engine = draft_engine(draft_base, ppd, tune, **engine_options)
        return DraftProposer(engine, length=length, schedule=schedule)

    return make


def wrap(
    model: Any,
    tokenizer: Any,
    prompt_tokens: str | Path | PromptTokens | None = "default",
    tree: str | Path | TreeSpec = "auto",
    name: str | None = None,
    tune: bool = True,
    pack: bool = False,
    **engine_options: Any,
) -> Engine:
    """An engine for a transformers causal LM you already hold (loaded with ``attn_implementation="sdpa"``).

    The model is put in evaluation mode without gradients (``LoadedModel.wrap``); its device and
    dtype are kept. ``name`` (default: the last part of its ``name_or_path``) finds the prompt tokens
    ``ppd prepare`` registered for it, or the shipped ones; ``prompt_tokens``, ``tree``, ``tune`` and
    ``engine_options`` are as for ``load``, and ``prompt_tokens`` may also be a ``PromptTokens`` object.
    ``pack=True`` prepacks the model's linear layers in place as ``load`` does (faster on a CPU; the
    model can no longer be trained), off by default because the model is yours.
    """
    from ppdecode.kernels import pack_linears
    from ppdecode.models import LoadedModel

    base = LoadedModel.wrap(model, tokenizer, name)
    if pack:
        pack_linears(base)
    return _engine(base, prompt_tokens, tree, tune, engine_options)


def _engine(
    base: LoadedModel,
    prompt_tokens: str | Path | PromptTokens | None,
    tree: str | Path | TreeSpec,
    tune: bool,
    engine_options: dict[str, Any],
) -> Engine:
    from ppdecode.engine import Engine
    from ppdecode.prompt_tokens import PromptTokens, default_prompt_tokens
    from ppdecode.tune.resolve import resolve_trees
    from ppdecode.tune.store import draft_identity

    if isinstance(prompt_tokens, PromptTokens):
        tokens: PromptTokens | None = prompt_tokens
    elif prompt_tokens == "default":
        tokens = default_prompt_tokens(base)
    elif prompt_tokens is not None:
        tokens = PromptTokens.load(prompt_tokens, base)
    else:
        tokens = None
    if tokens is None:
        return Engine(base, **engine_options)  # vanilla, or a draft's tokens alone
    # a tree confirmed with this very draft in the mix (`ppd tune --draft`) is preferred where one is stored
    draft = draft_identity(engine_options.get("draft"))
    trees = resolve_trees(base, tokens, tree, allow_tune=tune, draft=draft)
    if trees.get(1) is None:
        logger.warning(
            "no tree pays for one row with %s on this device (%s): %s; `ppd tune --confirm 3` measures "
            "it again, `--tree FILE` forces a tree (docs/trees.md)",
            base.name, str(base.dtype).removeprefix("torch."),
            "the draft's tokens are verified alone" if draft else "decoding without guesses",
        )
        if draft:  # the draft asked for is used: its tokens alone, as a chain under the root
            return Engine(base, **engine_options)
    return Engine(base, tokens, trees, **engine_options)
