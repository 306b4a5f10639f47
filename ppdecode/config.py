"""Typed generation settings, validated where they are made."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
    # inputs a lookup chain (copied tokens verified past the tree) may add to the tree's largest step;
    # steps with a smaller tree get their difference too (0 = no chain)
    lookup_chain: int = 4

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.lookup_chain < 0:
            raise ValueError(f"lookup_chain must be >= 0 (0 = off), got {self.lookup_chain}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        self.accept = AcceptMode(self.accept)
        if self.accept is AcceptMode.AUTO:
            self.accept = AcceptMode.GREEDY if self.temperature == 0 else AcceptMode.LOSSLESS
        if self.accept is not AcceptMode.GREEDY and self.temperature == 0:
            raise ValueError(
                f"accept={self.accept.value} needs temperature > 0; use temperature 0 for greedy"
            )
        if self.accept is AcceptMode.GREEDY and self.temperature > 0:
            raise ValueError("accept=greedy ignores temperature; set temperature 0 or accept=lossless")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in self.stop if s)
