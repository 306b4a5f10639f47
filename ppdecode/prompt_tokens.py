"""Prompt tokens: N trained input embeddings (× V ensemble members) appended to a frozen base model.

Prompt token k's output predicts the token at distance k+1 (METHOD §1). Optionally *deep* prompt
tokens also learn one vector per decoder layer, added to the hidden state at that layer's input at
prompt-slot positions only (METHOD §2, our extension). Both act through the model's ordinary forward:
embeddings go in through ``inputs_embeds``; the per-layer vectors through forward pre-hooks on the
decoder layers, which add what a forward call passes under ``SLOT_DELTAS`` (``PromptTokens.forward_kwargs``):
the state of a forward travels with the call, never on a shared module.

An artifact is a directory holding ``prompt_tokens.safetensors`` and ``config.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import weakref
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ppdecode.models import LoadedModel

logger = logging.getLogger(__name__)

WEIGHTS = "prompt_tokens.safetensors"
CONFIG = "config.json"
DEFAULT_INIT_WORDS = ("next", "following", "after")


@dataclass
class PromptTokensConfig:
    """What a prompt-token artifact is and which base model it belongs to."""

    num_prompt_tokens: int = 3
    ensemble: int = 1
    deep: bool = False
    init_words: tuple[str, ...] = DEFAULT_INIT_WORDS
    base_model: str = ""
    fingerprint: str = ""
    hidden_size: int = 0
    num_layers: int = 0
    trained: bool = False
    record: dict[str, Any] = field(default_factory=dict)  # training data, settings, loss, accuracy

    def __post_init__(self) -> None:
        if self.num_prompt_tokens < 1:
            raise ValueError(f"num_prompt_tokens must be >= 1, got {self.num_prompt_tokens}")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {self.ensemble}")
        self.init_words = tuple(self.init_words)
        if not self.init_words:
            raise ValueError("init_words must name at least one word")


def decoder_layers(model: Any) -> nn.ModuleList:
    """The decoder layers of a causal LM, found by their count rather than by a family-specific path."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    count = config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"could not find the {count} decoder layers of {type(model).__name__}")


SLOT_DELTAS = "ppd_slot_deltas"  # the forward keyword that carries deep prompt tokens' layer vectors


@dataclass(frozen=True)
class SlotDeltas:
    """Layer vectors to add at one forward's slot inputs (transformers passes it down to every layer)."""

    deltas: torch.Tensor  # [S, layers, H] the per-layer vectors of each slot input's prompt token
    positions: torch.Tensor  # [S] input position of each slot input
    rows: torch.Tensor | None  # [S] its batch row; None: the same slots in every row

    def add(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """hidden [B, T, H] -> the same with the vectors of ``layer`` added at the slot inputs."""
        b, t, h = hidden.shape
        delta = self.deltas[:, layer].to(hidden.dtype)  # [S, H]
        if self.rows is None:
            return hidden.index_add(1, self.positions, delta.unsqueeze(0).expand(b, -1, -1))
        flat = self.rows * t + self.positions  # [S]
        return hidden.reshape(b * t, h).index_add(0, flat, delta).reshape(b, t, h)


_HOOKED: weakref.WeakSet[Any] = weakref.WeakSet()  # models whose decoder layers carry the hooks


def install_layer_hooks(model: Any) -> None:
    """Once per model: each decoder layer adds the ``SLOT_DELTAS`` of the forward call, if any."""
    if model in _HOOKED:
        return
    for index, layer in enumerate(decoder_layers(model)):
        layer.register_forward_pre_hook(_layer_hook(index), with_kwargs=True)
    _HOOKED.add(model)


def _layer_hook(layer: int) -> Any:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        slot_deltas = kwargs.get(SLOT_DELTAS)
        if slot_deltas is None:
            return None
        hidden = slot_deltas.add(args[0] if args else kwargs["hidden_states"], layer)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    return hook


class PromptTokens(nn.Module):
    """Trainable prompt embeddings [N, V, hidden] and, if deep, per-layer vectors [N, layers, hidden]."""

    def __init__(self, config: PromptTokensConfig) -> None:
        super().__init__()
        self.config = config
        n, v, h = config.num_prompt_tokens, config.ensemble, config.hidden_size
        self.embeddings = nn.Parameter(torch.zeros(n, v, h))  # [N, V, H]
        self.layer_deltas = nn.Parameter(torch.zeros(n, config.num_layers, h)) if config.deep else None

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def initial(
        cls, base: LoadedModel, config: PromptTokensConfig | None = None, seed: int = 0
    ) -> PromptTokens:
        """Untrained prompt tokens: each starts from the embedding of an ordinary word (METHOD §2)."""
        config = config or PromptTokensConfig()
        text_config = base.model.config.get_text_config()
        config.base_model, config.fingerprint = base.name, base.fingerprint
        config.hidden_size, config.num_layers = text_config.hidden_size, text_config.num_hidden_layers
        tokens = cls(config)
        embed = base.model.get_input_embeddings()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for k in range(config.num_prompt_tokens):
                word = config.init_words[k % len(config.init_words)]
                ids = base.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
                vector = embed(torch.tensor(ids, device=base.device)).float().mean(0).cpu()  # [H]
                for member in range(config.ensemble):
                    # Identical members would get identical gradients forever: break the tie.
                    noise = (
                        torch.randn(vector.shape, generator=generator) * vector.std() * 0.02 * (member > 0)
                    )
                    tokens.embeddings[k, member] = vector + noise
        tokens.attach(base.model)
        return tokens.to(base.device)

    @property
    def num_prompt_tokens(self) -> int:
        return self.config.num_prompt_tokens

    @property
    def ensemble(self) -> int:
        return self.config.ensemble

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- use in a forward pass --------------------------------------------------------------------
    def slot_embeddings(
        self, prompt_index: torch.Tensor, member: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """Input embeddings of slot inputs: [S] prompt indices, [S] members -> [S, H]."""
        return self.embeddings[prompt_index, member].to(dtype)

    def attach(self, model: Any) -> None:
        """Make ``model`` apply deep prompt tokens' layer vectors (a no-op for plain tokens).

        The hooks it installs are shared and stateless: what to add comes with each forward call (see
        ``forward_kwargs``), so any number of prompt-token sets can share one base model.
        """
        if self.layer_deltas is not None:
            install_layer_hooks(model)

    def forward_kwargs(
        self,
        positions: torch.Tensor,
        prompt_index: torch.Tensor,
        rows: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments of a forward that adds the layer vectors at the slot inputs ({} if not deep).

        positions, prompt_index: [S] input position and prompt token (0..N-1) of each slot input;
        rows: [S] batch row of each, or None to apply them to every row of the batch. The vectors are
        gathered (and cast to ``dtype``, the forward's, where given) once for all layers.
        """
        if self.layer_deltas is None or positions.numel() == 0:
            return {}
        deltas = self.layer_deltas[prompt_index]  # [S, layers, H]
        return {SLOT_DELTAS: SlotDeltas(deltas if dtype is None else deltas.to(dtype), positions, rows)}

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the artifact directory; a good artifact there is replaced only once the new one is whole."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            tensors = {"embeddings": self.embeddings.detach().float().cpu().contiguous()}
            if self.layer_deltas is not None:
                tensors["layer_deltas"] = self.layer_deltas.detach().float().cpu().contiguous()
            save_file(tensors, str(tmp / WEIGHTS))
            (tmp / CONFIG).write_text(json.dumps(asdict(self.config), indent=1) + "\n")
            old = path.with_name(f".{path.name}.old")
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: str | Path, base: LoadedModel) -> PromptTokens:
        """Load an artifact for ``base``; refuses tokens trained for another base model."""
        path = Path(path)
        if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
            raise ValueError(
                f"{path} is not a prompt-token artifact: expected a directory with {CONFIG} and {WEIGHTS}"
            )
        try:
            raw = json.loads((path / CONFIG).read_text())
            raw["init_words"] = tuple(raw.get("init_words", DEFAULT_INIT_WORDS))
            config = PromptTokensConfig(**raw)
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"prompt-token config {path / CONFIG} is corrupt: {err}") from None
        if config.fingerprint != base.fingerprint:
            raise ValueError(
                f"prompt tokens at {path} were trained for base model {config.base_model!r} "
                f"(fingerprint {config.fingerprint}), not for {base.name!r} "
                f"(fingerprint {base.fingerprint}); "
                "train tokens for this model with `ppd train`, or decode without them (--no-ppd)"
            )
        try:
            tensors = load_file(str(path / WEIGHTS))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"prompt-token weights {path / WEIGHTS} are corrupt: {err}") from None
        tokens = cls(config)
        expected = {name: tuple(p.shape) for name, p in tokens.named_parameters()}
        found = {name: tuple(t.shape) for name, t in tensors.items()}
        if expected != found:
            raise ValueError(f"prompt-token weights {path / WEIGHTS} hold {found}, expected {expected}")
        tokens.load_state_dict(tensors)
        tokens.attach(base.model)
        return tokens.to(base.device)


def packaged_tokens_path(model_name: str) -> Path:
    return Path(str(resources.files("ppdecode.data").joinpath("prompt_tokens", model_name)))


def default_prompt_tokens(base: LoadedModel) -> PromptTokens:
    """The tokens ``ppd prepare`` registered for ``base``, else the shipped ones, else an untrained
    initialisation (with a warning)."""
    from ppdecode.prepare.registry import prepared_tokens_path

    prepared = prepared_tokens_path(base)
    if prepared is not None:
        try:
            tokens = PromptTokens.load(prepared, base)
        except ValueError as err:
            logger.warning("ignoring the prepared prompt tokens (%s); run `ppd prepare` again", err)
        else:
            logger.info("prompt tokens: prepared for %s (%s)", base.name, prepared)
            return tokens
    shipped = packaged_tokens_path(base.name)
    if (shipped / CONFIG).is_file():
        return PromptTokens.load(shipped, base)
    logger.warning(
        "no trained prompt tokens ship for %s: using an untrained initialisation (few guesses will be "
        "accepted); make some with `ppd prepare --model %s`",
        base.name,
        base.name,
    )
    return PromptTokens.initial(base)
