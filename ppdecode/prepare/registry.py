"""Prepared models in the user cache: where ``ppd prepare`` puts its result and how it is found again.

One entry per base model, keyed by its fingerprint (architecture and vocabulary) and its name (two
fine-tunes of one architecture share a fingerprint, not a name):

    cache_dir()/registry/<fingerprint>/<name>/
        prompt_tokens/              the trained artifact (its record holds the accuracy table)
        accuracy.json               held-out accuracy, the tree builder's input
        trees/<device>-<dtype>.json the tree tuned on this machine (meta: tuned_for, batch choices)
        entry.json                  what was prepared, how, and the summary; written last

``default_prompt_tokens`` takes the entry's tokens before the shipped ones, and the tree resolver takes
its tree when no hardware profile matches exactly (the tree was tuned with these very tokens, this
device type and dtype). Every file is written atomically, ``entry.json`` last, so a reader sees a
complete entry or none.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppdecode.models import LoadedModel, cache_dir
from ppdecode.tree.spec import write_json_atomic

if TYPE_CHECKING:
    from ppdecode.prompt_tokens import PromptTokens
    from ppdecode.tree.spec import TreeSpec

ENTRY = "entry.json"
TOKENS = "prompt_tokens"
ACCURACY = "accuracy.json"
ENTRY_KIND = "ppdecode-prepared-model"


def registry_dir() -> Path:
    return cache_dir() / "registry"


def slug(name: str) -> str:
    """A file-name-safe form of a model name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def entry_dir(fingerprint: str, name: str) -> Path:
    return registry_dir() / fingerprint / slug(name)


def read_entry(fingerprint: str, name: str) -> dict[str, Any] | None:
    """The entry prepared for this model, or None (none, half-written, or for another model)."""
    path = entry_dir(fingerprint, name) / ENTRY
    try:
        entry = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(entry, dict) or entry.get("kind") != ENTRY_KIND:
        return None
    if entry.get("fingerprint") != fingerprint or entry.get("model") != name:
        return None
    return entry


def prepared_tokens_path(base: LoadedModel) -> Path | None:
    """The prompt tokens ``ppd prepare`` registered for ``base``, if any."""
    if read_entry(base.fingerprint, base.name) is None:
        return None
    path = entry_dir(base.fingerprint, base.name) / TOKENS
    return path if path.is_dir() else None


def prepared_tree_path(fingerprint: str, name: str, device_type: str, dtype: str) -> Path:
    """Where the tree prepared for this model, device type and dtype is (it may not exist)."""
    return entry_dir(fingerprint, name) / "trees" / f"{device_type}-{dtype}.json"


def register(
    base: LoadedModel,
    tokens: PromptTokens,
    accuracy: dict[str, Any],
    tree: TreeSpec,
    entry: dict[str, Any],
) -> Path:
    """Store a preparation as the entry of ``base``; returns the entry's folder.

    ``tree`` must carry ``meta["tuned_for"]`` (the hardware key it was tuned under); ``entry`` is what
    to say about the preparation (settings, summary), stored in ``entry.json``.
    """
    tuned = tree.meta.get("tuned_for")
    if not isinstance(tuned, dict):
        raise ValueError("only a tuned tree (meta.tuned_for) can be registered")
    folder = entry_dir(base.fingerprint, base.name)
    tokens.save(folder / TOKENS)
    write_json_atomic(folder / ACCURACY, accuracy)
    device_type, dtype = str(tuned["device_type"]), str(tuned["dtype"])
    tree_path = prepared_tree_path(base.fingerprint, base.name, device_type, dtype)
    tree.save(tree_path)
    write_json_atomic(
        folder / ENTRY,
        {**entry, "kind": ENTRY_KIND, "model": base.name, "fingerprint": base.fingerprint,
         "prompt_tokens": str(folder / TOKENS), "tree": str(tree_path)},
    )
    return folder
