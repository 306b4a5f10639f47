"""Typed generation settings, validated where they are made."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, replace
from typing import Any


class AcceptMode(str, enum.Enum):
    """How guesses are verified (METHOD §3)."""

    AUTO = "auto"  # greedy at temperature 0, lossless sampling above
    GREEDY = "greedy"  # argmax everywhere; output equals vanilla greedy decoding
    TYPICAL = "typical"  # Medusa's typical acceptance: fast, not lossless
    LOSSLESS = "lossless"  # each token distributed exactly as the model's (processed) distribution


@dataclass
class GenerationConfig:
    """Settings of one generation; ``use_ppd=False`` decodes one token per forward (vanilla)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k filtering of the sampling distribution
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    accept: AcceptMode = AcceptMode.AUTO
    posterior_threshold: float = 0.09  # typical acceptance (Medusa's defaults)
    posterior_alpha: float = 0.3
    chat: bool = True  # apply the chat template when the model has one; False = raw completion
    use_ppd: bool = True
    lookup: bool = True  # prompt lookup joins the prompt tokens' guesses (rank 0 where the history repeats)
    # inputs a chain (a continuation verified past the tree: lookup copies, a draft model's tokens) may
    # add to the tree's largest step; steps with a smaller tree get their difference too (0 = no chain)
    lookup_chain: int = 4
    # a row whose chain was accepted whole doubles its chain room, up to this many inputs (long copies)
    max_lookup_chain: int = 16
    ignore_eos: bool = False  # go on past EOS tokens (benchmarks, drafting)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.lookup_chain < 0:
            raise ValueError(f"lookup_chain must be >= 0 (0 = off), got {self.lookup_chain}")
        if self.max_lookup_chain < self.lookup_chain:
            raise ValueError(
                f"max_lookup_chain ({self.max_lookup_chain}) must be >= lookup_chain ({self.lookup_chain})"
            )
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        self.accept = AcceptMode(self.accept)
        mode = self.accept_mode
        if mode is not AcceptMode.GREEDY and self.temperature == 0:
            raise ValueError(f"accept={mode.value} needs temperature > 0; use temperature 0 for greedy")
        if mode is AcceptMode.GREEDY and self.temperature > 0:
            raise ValueError("accept=greedy ignores temperature; set temperature 0 or accept=lossless")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in self.stop if s)

    @property
    def accept_mode(self) -> AcceptMode:
        """The rule in force: AUTO is greedy at temperature 0 and lossless sampling above it.

        AUTO stays AUTO in the config, so an override of the temperature changes the rule with it.
        """
        if self.accept is AcceptMode.AUTO:
            return AcceptMode.GREEDY if self.temperature == 0 else AcceptMode.LOSSLESS
        return self.accept

    def updated(self, **overrides: Any) -> GenerationConfig:
        """A copy with some settings changed; ``transformers`` names are understood too.

        ``do_sample=False`` means temperature 0; ``do_sample=True`` samples (temperature 1 unless
        given); ``stop_strings`` is ``stop``. An unknown name is refused with the list of valid ones.
        """
        names = {f.name for f in fields(self)}
        changes = dict(overrides)
        for alias, name in HF_ALIASES.items():
            if alias in changes:
                changes[name] = changes.pop(alias)
        do_sample = changes.pop("do_sample", None)
        if do_sample is False:
            changes["temperature"] = 0.0
        elif do_sample and changes.get("temperature", self.temperature) == 0:
            changes["temperature"] = 1.0
        unknown = sorted(set(changes) - names)
        if unknown:
            valid = ", ".join(sorted(names | set(HF_ALIASES) | {"do_sample"}))
            raise ValueError(f"unknown generation setting(s) {', '.join(unknown)}; valid names: {valid}")
        if isinstance(changes.get("stop"), list):
            changes["stop"] = tuple(changes["stop"])
        return replace(self, **changes) if changes else self


# transformers' generation names that mean the same as ours
HF_ALIASES = {"stop_strings": "stop"}
