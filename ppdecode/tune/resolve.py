"""``resolve_tree``: the tree an engine should decode with, ``"auto"`` meaning "tuned for this device".

For ``"auto"``, the first of these that applies:

1. the stored hardware profile for this exact setup (model, prompt tokens, device, dtype, threads);
2. the tree ``ppd prepare`` registered for this model, device type and dtype, then the tree shipped for
   this model and device type (``data/trees/<model>-<cpu|cuda>.json``), if it was tuned with these very
   prompt tokens;
3. a quick tune (seconds, with a progress bar), stored as this setup's profile, if allowed and an
   accuracy table for these prompt tokens is known;
4. the packaged ``default`` tree, with a warning.

Anything else is a tree spec path, a packaged tree name, or a hardware profile JSON; a profile measured
elsewhere, or a tree for another number of prompt tokens, is refused with a ValueError.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ppdecode.models import LoadedModel
from ppdecode.prepare.registry import prepared_tree_path
from ppdecode.prompt_tokens import PromptTokens
from ppdecode.tree.builder import Accuracy
from ppdecode.tree.spec import DEFAULT_TREE, TreeSpec, load_tree, packaged_tree_path
from ppdecode.tune.store import (
    PROFILE_KIND,
    HardwareKey,
    HardwareProfile,
    current_key,
    load_profile,
    save_profile,
)
from ppdecode.tune.tuner import TuneConfig, accuracy_for, tune

logger = logging.getLogger(__name__)

AUTO = "auto"


def shipped_tree_path(model_name: str, device_type: str) -> Path:
    return packaged_tree_path(f"{model_name}-{device_type}")


def resolve_tree(
    base: LoadedModel,
    prompt_tokens: PromptTokens | None,
    tree: str | Path | TreeSpec = AUTO,
    allow_tune: bool = True,
    accuracy: str | Path | Accuracy | None = None,
    progress: bool = True,
) -> TreeSpec:
    """The tree to decode ``base`` with ``prompt_tokens``; see the module docstring for ``"auto"``.

    ``accuracy`` (a file or table) is only used when "auto" has to tune; by default the table comes from
    the prompt tokens' record or, for the shipped tokens, the shipped table. With ``prompt_tokens=None``
    (vanilla decoding, which uses no tree) "auto" gives the default tree.
    """
    if isinstance(tree, TreeSpec):
        spec, source = tree, "the given tree"
    elif str(tree) == AUTO:
        if prompt_tokens is None:
            return load_tree(DEFAULT_TREE)
        return _auto(base, prompt_tokens, allow_tune, accuracy, progress)
    elif _is_profile(tree):
        if prompt_tokens is None:
            raise ValueError(f"{tree} is a hardware profile for prompt tokens; vanilla decoding uses no tree")
        profile = HardwareProfile.read(tree)
        profile.check(current_key(base, prompt_tokens), source=f"hardware profile {tree}")
        spec, source = profile.tree, f"hardware profile {tree}"
    else:
        spec, source = load_tree(tree), f"tree {str(tree)!r}"
    if prompt_tokens is not None and spec.num_prompt_tokens != prompt_tokens.num_prompt_tokens:
        raise ValueError(
            f"{source} is built for {spec.num_prompt_tokens} prompt tokens, but the prompt tokens have "
            f"{prompt_tokens.num_prompt_tokens}; build a tree for them with `ppd build-tree --accuracy FILE` "
            "or use --tree auto"
        )
    return spec


def resolve_trees(
    base: LoadedModel,
    prompt_tokens: PromptTokens,
    tree: str | Path | TreeSpec = AUTO,
    allow_tune: bool = True,
    draft: str = "",
) -> dict[int, TreeSpec | None]:
    """The tree per number of active rows (``Engine(tree=...)``): a hardware profile's batch choices
    where "auto" or the given profile has them, else the one tree of ``resolve_tree`` for every size.

    ``draft`` (``draft_identity``): with "auto", a profile tuned with this draft in the proposer mix
    (``ppd tune --draft``) comes first; without one the trees are chosen as for the prompt tokens alone.
    """
    if draft and isinstance(tree, str | Path) and str(tree) == AUTO:
        confirmed = load_profile(current_key(base, prompt_tokens, draft))
        if confirmed is not None:
            logger.info("trees: the profile tuned with the draft %s", draft)
            return confirmed.trees()
    single = resolve_tree(base, prompt_tokens, tree, allow_tune)
    profile = None
    if isinstance(tree, str | Path) and str(tree) == AUTO:
        profile = load_profile(current_key(base, prompt_tokens))
    elif isinstance(tree, str | Path) and _is_profile(tree):
        profile = HardwareProfile.read(tree)
    if profile is None or profile.tree != single:
        batch = single.meta.get("batch")  # a shipped tree may carry its batch choices
        if not isinstance(batch, dict):
            return {1: single}
        return {1: single, **{int(b): _batch_tree(spec) for b, spec in batch.items()}}
    return profile.trees()


def _batch_tree(data: Any) -> TreeSpec | None:
    return None if data is None else TreeSpec.from_dict(data, source="a shipped tree's batch choice")


def _is_profile(tree: str | Path) -> bool:
    path = Path(tree)
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False  # load_tree will say what is wrong with it
    return isinstance(data, dict) and data.get("kind") == PROFILE_KIND


def _auto(
    base: LoadedModel,
    tokens: PromptTokens,
    allow_tune: bool,
    accuracy: str | Path | Accuracy | None,
    progress: bool,
) -> TreeSpec:
    key = current_key(base, tokens)
    profile = load_profile(key)
    if profile is not None:
        logger.info("tree: tuned profile for %s on %s (budget %d)", key.model, key.device_name,
                    profile.chosen_budget)
        return profile.tree
    for path in (
        prepared_tree_path(key.model_fingerprint, key.model, key.device_type, key.dtype),
        shipped_tree_path(key.model, key.device_type),
    ):
        tuned = _tuned_tree(path, key)
        if tuned is not None:
            return tuned
    if allow_tune:
        table = accuracy_for(base, tokens, accuracy)
        if table is None:
            logger.warning(
                "cannot tune a tree for these prompt tokens: no accuracy table is known for them "
                "(give one with `ppd tune --accuracy FILE`)"
            )
        else:
            logger.warning(
                "no tree is tuned for %s on %s (%s, %d threads) yet: running a quick tune (seconds); "
                "`ppd tune --confirm 3` measures more carefully", key.model, key.device_name, key.dtype,
                key.threads,
            )
            profile = tune(base, tokens, table, TuneConfig.quick_preset(progress=progress), key)
            try:
                save_profile(profile)
            except OSError as err:
                logger.warning("could not store the hardware profile (%s); it is re-tuned next time", err)
            return profile.tree
    default = load_tree(DEFAULT_TREE)
    if default.num_prompt_tokens != tokens.num_prompt_tokens:
        raise ValueError(
            f"no tree fits {tokens.num_prompt_tokens} prompt tokens on this device: the default tree is for "
            f"{default.num_prompt_tokens}; build one with `ppd build-tree` or tune one with "
            "`ppd tune --accuracy FILE`"
        )
    logger.warning(
        "using the packaged default tree, which is not tuned for %s; run `ppd tune` for a faster one",
        key.device_name,
    )
    return default


def _tuned_tree(path: Path, key: HardwareKey) -> TreeSpec | None:
    """The tree at ``path`` (prepared or shipped for this model and device type), if it was tuned with
    these prompt tokens, this dtype, these kernels and (where it records one) this instruction set."""
    if not path.is_file():
        return None
    try:
        spec = TreeSpec.load(path)
    except ValueError as err:
        logger.warning("ignoring the tree %s: %s", path, err)
        return None
    tuned = spec.meta.get("tuned_for")
    tuned = tuned if isinstance(tuned, dict) else {}
    if (
        tuned.get("prompt_tokens") != key.prompt_tokens
        or tuned.get("model_fingerprint") != key.model_fingerprint
        or spec.num_prompt_tokens != key.num_prompt_tokens
    ):
        logger.info("the tree %s was tuned with other prompt tokens; not using it", path)
        return None
    # What a step of n inputs costs: multi-token forwards cost far more in float32 than in bf16 on a
    # CPU with native bf16 kernels, and far more in bf16 than in float32 on one without (where the
    # linear layers cannot be packed and a bf16 product runs row by row). A tree tuned with other
    # kernels is no guide. A tree that records no kernels was tuned on the stock ones; one that records
    # no instruction set is taken for any.
    recorded = {"kernels": "stock", "isa": key.isa, **tuned}
    mismatched = [
        f"{field} {recorded.get(field)!r}, not {getattr(key, field)!r}"
        for field in ("dtype", "kernels", "isa")
        if recorded.get(field) != getattr(key, field)
    ]
    if mismatched:
        logger.info("the tree %s was tuned for %s; not using it", path, ", ".join(mismatched))
        return None
    logger.info("tree: %s (tuned on %s, %s, %s threads)", path, tuned.get("device_name"),
                tuned.get("dtype"), tuned.get("threads"))
    return spec
