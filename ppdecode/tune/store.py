"""Hardware profiles: the tuner's measurements and choice, stored per (model, prompt tokens, device).

A profile is valid only where it was measured. Its key holds everything that changes either the
latency or the accuracies — the base model's fingerprint, the prompt tokens' identity (their base
fingerprint and a hash of their weights), the device's name, the dtype, the number of torch
threads, the kernels (ppdecode.kernels) and the draft model in the proposer mix, if any — and the
file lives at ``cache_dir()/profiles/<digest of the key>.json``. A profile whose key
differs from the current one in any field is never used: ``load_profile`` says which field differs
and returns None, so that the caller re-tunes or falls back.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ppdecode.kernels import kernels_name
from ppdecode.models import LoadedModel, cache_dir, device_name, instruction_set
from ppdecode.prompt_tokens import CONFIG, WEIGHTS, PromptTokens
from ppdecode.tree.spec import TreeSpec, write_json_atomic
from ppdecode.tune.choice import Prediction
from ppdecode.tune.decode import DecodeMeasurement
from ppdecode.tune.latency import LatencyProfile

if TYPE_CHECKING:
    from ppdecode.proposers.draft import DraftProposer

logger = logging.getLogger(__name__)

PROFILE_KIND = "ppdecode-hardware-profile"
PROFILE_VERSION = 1


# ---- identities ----------------------------------------------------------------------------------


def _tensor_digest(fingerprint: str, tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(fingerprint.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().float().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def tokens_identity(tokens: PromptTokens) -> str:
    """Identity of prompt tokens: their base model's fingerprint and a hash of their float32 weights.

    It equals ``artifact_identity`` of the directory they were loaded from (the artifact stores float32
    tensors), and it also covers tokens that only live in memory, such as an untrained initialisation.
    """
    tensors = {name: param for name, param in tokens.named_parameters()}
    return _tensor_digest(tokens.config.fingerprint, tensors)


def artifact_identity(path: str | Path) -> str | None:
    """``tokens_identity`` of a prompt-token artifact directory, without a model; None if unreadable."""
    path = Path(path)
    try:
        fingerprint = str(json.loads((path / CONFIG).read_text())["fingerprint"])
        tensors = load_file(str(path / WEIGHTS))
    except (OSError, KeyError, TypeError, json.JSONDecodeError, SafetensorError):
        return None
    return _tensor_digest(fingerprint, tensors)


@dataclass(frozen=True)
class HardwareKey:
    """Everything a tuned tree depends on; two profiles with different keys never stand in for each other."""

    model: str
    model_fingerprint: str
    prompt_tokens: str  # tokens_identity
    num_prompt_tokens: int
    device_type: str  # "cpu" or "cuda"
    device_name: str
    dtype: str  # "bfloat16", ...
    threads: int  # torch.get_num_threads()
    kernels: str = "stock"  # "stock", or "packed+grouped-attention" (ppdecode.kernels)
    isa: str = ""  # ppdecode.models.instruction_set: one CPU model name may come with other kernels
    draft: str = ""  # the draft model in the proposer mix the trees were confirmed with ("" = none)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:20]

    def differences(self, other: HardwareKey) -> list[str]:
        """Fields in which ``self`` (stored) differs from ``other`` (here), as readable phrases."""
        return [
            f"{f.name} {getattr(self, f.name)!r} (profile) vs {getattr(other, f.name)!r} (here)"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> HardwareKey:
        if not isinstance(data, dict):
            raise ValueError("the key must be a JSON object")
        try:
            given = [f.name for f in fields(cls) if f.name in data or f.default is MISSING]
            return cls(**{name: data[name] for name in given})
        except KeyError as err:
            raise ValueError(f"the key lacks {err}") from None


def draft_identity(draft: DraftProposer | None) -> str:
    """The draft part of a proposer mix: the draft model's name and fingerprint, its own prompt tokens'
    identity when it writes with PPD, its first draft length and a fixed schedule; "" without a draft."""
    from ppdecode.proposers.draft import DraftSchedule

    if draft is None:
        return ""
    engine = draft.engine
    identity = f"{engine.base.name} {engine.base.fingerprint}"
    if engine.prompt_tokens is not None:
        identity += f" ppd {tokens_identity(engine.prompt_tokens)}"
    fixed = " fixed" if draft.schedule is DraftSchedule.FIXED else ""  # adaptive: as keyed before
    return f"{identity} length {draft.length}{fixed}"


def current_key(base: LoadedModel, tokens: PromptTokens, draft: str = "") -> HardwareKey:
    """The key of this setup; ``draft`` is ``draft_identity`` of the draft in the mix, if any."""
    device = base.device
    return HardwareKey(
        model=base.name,
        model_fingerprint=base.fingerprint,
        prompt_tokens=tokens_identity(tokens),
        num_prompt_tokens=tokens.num_prompt_tokens,
        device_type=device.type,
        device_name=device_name(device),
        dtype=str(base.dtype).removeprefix("torch."),
        threads=torch.get_num_threads(),
        kernels=kernels_name(base),
        isa=instruction_set(device),
        draft=draft,
    )


# ---- profiles ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetRow:
    """One budget of the family: its prediction and, if it was confirmed, its measured decoding."""

    prediction: Prediction
    input_sizes: tuple[int, ...]  # [N + 1]: inputs of a step at depth d = 0..N
    measured: DecodeMeasurement | None = None

    @property
    def budget(self) -> int:
        return self.prediction.budget

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.prediction.to_dict(),
            "input_sizes": list(self.input_sizes),
            "measured": None if self.measured is None else self.measured.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BudgetRow:
        measured = data.get("measured")
        return cls(
            prediction=Prediction(
                int(data["budget"]), float(data["expected_tau"]), float(data["step_ms"]),
                float(data["tokens_per_s"]), float(data["speedup"]),
            ),
            input_sizes=tuple(int(n) for n in data["input_sizes"]),
            measured=None if measured is None else DecodeMeasurement.from_dict(measured),
        )


@dataclass(frozen=True)
class BatchChoice:
    """The tree chosen for ``batch`` active rows, from forwards of B x n inputs (None: vanilla)."""

    batch: int
    latency: LatencyProfile  # per-row input sizes n, forwards of ``batch`` rows
    budget: int  # 0: vanilla decoding
    speedup: float  # predicted throughput over vanilla decoding at this batch size
    tree: TreeSpec | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "latency": self.latency.to_dict(),
            "budget": self.budget,
            "speedup": round(self.speedup, 4),
            "tree": None if self.tree is None else self.tree.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> BatchChoice:
        tree = data.get("tree")
        return cls(
            batch=int(data["batch"]),
            latency=LatencyProfile.from_dict(data["latency"]),
            budget=int(data["budget"]),
            speedup=float(data["speedup"]),
            tree=None if tree is None else TreeSpec.from_dict(tree, source=f"{source}: batch tree"),
        )


@dataclass(frozen=True)
class HardwareProfile:
    """What ``ppd tune`` measured on one device and which tree it chose."""

    key: HardwareKey
    latency: LatencyProfile
    rows: tuple[BudgetRow, ...]  # one per budget tried, in budget order
    vanilla: DecodeMeasurement | None  # vanilla decoding of the confirmation prompts, if confirmed
    predicted_budget: int  # the best budget by prediction alone
    chosen_budget: int  # after confirmation (equal to predicted_budget without one)
    tree: TreeSpec  # the chosen budget's tree
    quick: bool
    accuracy_source: str
    created: str = ""
    batch: tuple[BatchChoice, ...] = ()  # the choice for larger batch sizes, ascending
    tree_pays: bool = True  # False: no tree pays even for one active row, which decodes vanilla

    def trees(self) -> dict[int, TreeSpec | None]:
        """The tree per number of active rows (from that many on), for ``Engine(tree=...)``, each with
        what its step costs here over a root-only step (meta ``step_ratio``: a row whose guesses do not
        earn that much rests its tree, ``planner.TreeUse``)."""
        alone = self._priced(self.tree, self.latency, self.chosen_budget) if self.tree_pays else None
        batch = {c.batch: c.tree and self._priced(c.tree, c.latency, c.budget) for c in self.batch}
        return {1: alone, **batch}

    def _priced(self, tree: TreeSpec, latency: LatencyProfile, budget: int) -> TreeSpec:
        shares = tree.meta.get("depth_share")
        if shares is None or all(row.budget != budget for row in self.rows):
            return tree
        plain = replace(latency, chain_share=0.0)  # the tree's own inputs: a copy costs both the same
        ratio = plain.tree_step_ms(self.row(budget).input_sizes, shares) / plain.step_ms(1)
        return replace(tree, meta={**tree.meta, "step_ratio": round(ratio, 4)})

    def exported_tree(self) -> TreeSpec:
        """The chosen tree with the batch choices in its meta, to ship as a device type's tree (where
        no tree pays for one row, the choice for 1 says so)."""
        batch = {str(c.batch): None if c.tree is None else c.tree.to_dict() for c in self.batch}
        if not self.tree_pays:
            batch = {"1": None, **batch}
        return replace(self.tree, meta={**self.tree.meta, "batch": batch})

    def row(self, budget: int) -> BudgetRow:
        for row in self.rows:
            if row.budget == budget:
                return row
        raise KeyError(budget)

    def measured_speedup(self, budget: int) -> float | None:
        measured = self.row(budget).measured
        if measured is None or self.vanilla is None or self.vanilla.tokens_per_s <= 0:
            return None
        return measured.tokens_per_s / self.vanilla.tokens_per_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": PROFILE_KIND,
            "version": PROFILE_VERSION,
            "created": self.created,
            "key": self.key.to_dict(),
            "quick": self.quick,
            "accuracy_source": self.accuracy_source,
            "latency": self.latency.to_dict(),
            "vanilla": None if self.vanilla is None else self.vanilla.to_dict(),
            "predicted_budget": self.predicted_budget,
            "chosen_budget": self.chosen_budget,
            "budgets": [row.to_dict() for row in self.rows],
            "tree": self.tree.to_dict(),
            "batch": [choice.to_dict() for choice in self.batch],
            "tree_pays": self.tree_pays,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "hardware profile") -> HardwareProfile:
        if not isinstance(data, dict) or data.get("kind") != PROFILE_KIND:
            raise ValueError(f"{source} is not a hardware profile written by `ppd tune`")
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(
                f"{source} has version {data.get('version')}, this ppdecode reads {PROFILE_VERSION}; "
                "re-run `ppd tune`"
            )
        try:
            vanilla = data.get("vanilla")
            return cls(
                key=HardwareKey.from_dict(data["key"]),
                latency=LatencyProfile.from_dict(data["latency"]),
                rows=tuple(BudgetRow.from_dict(row) for row in data["budgets"]),
                vanilla=None if vanilla is None else DecodeMeasurement.from_dict(vanilla),
                predicted_budget=int(data["predicted_budget"]),
                chosen_budget=int(data["chosen_budget"]),
                tree=TreeSpec.from_dict(data["tree"], source=f"{source}: tree"),
                quick=bool(data["quick"]),
                accuracy_source=str(data.get("accuracy_source", "")),
                created=str(data.get("created", "")),
                batch=tuple(BatchChoice.from_dict(choice, source) for choice in data.get("batch", [])),
                tree_pays=bool(data.get("tree_pays", True)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source} is corrupt ({err}); delete it and re-run `ppd tune`") from None

    @classmethod
    def read(cls, path: str | Path) -> HardwareProfile:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read hardware profile {path}: {err}") from None
        return cls.from_dict(data, source=f"hardware profile {path}")

    def check(self, key: HardwareKey, source: str = "hardware profile") -> None:
        """Refuse (ValueError) a profile measured for another model, tokens, device, dtype or threads."""
        differences = self.key.differences(key)
        if differences:
            raise ValueError(
                f"{source} was tuned elsewhere: {'; '.join(differences)}; run `ppd tune` here to make one "
                "for this setup"
            )
        if self.tree.num_prompt_tokens != key.num_prompt_tokens:
            raise ValueError(
                f"{source} holds a tree for {self.tree.num_prompt_tokens} prompt tokens, not "
                f"{key.num_prompt_tokens}; re-run `ppd tune`"
            )


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def profiles_dir() -> Path:
    return cache_dir() / "profiles"


def profile_path(key: HardwareKey) -> Path:
    return profiles_dir() / f"{key.digest()}.json"


def save_profile(profile: HardwareProfile, path: str | Path | None = None) -> Path:
    target = Path(path) if path is not None else profile_path(profile.key)
    write_json_atomic(target, profile.to_dict())
    logger.info("saved hardware profile %s (budget %d)", target, profile.chosen_budget)
    return target


def load_profile(key: HardwareKey) -> HardwareProfile | None:
    """The stored profile for ``key``, or None (with a warning) if it is missing, corrupt or for elsewhere."""
    path = profile_path(key)
    if not path.is_file():
        return None
    try:
        profile = HardwareProfile.read(path)
        profile.check(key, source=f"hardware profile {path}")
    except ValueError as err:
        logger.warning("ignoring %s", err)
        return None
    return profile
