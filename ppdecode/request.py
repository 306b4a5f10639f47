"""A generation request in the engine: its settings, decoding state, output so far and statistics.

The engine commits tokens to a request after each step; the request applies its own stopping rules
(EOS, ``max_new_tokens``, stop strings) and turns the tokens into text, so rows of one batch never
share output state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ppdecode.config import GenerationConfig
from ppdecode.planner import TreeUse
from ppdecode.proposers import DRAFT, LOOKUP, MODEL, PPD, Ranked
from ppdecode.text import TextStream

__all__ = [
    "DRAFT",
    "LOOKUP",
    "MODEL",
    "PPD",
    "GenerationResult",
    "GenerationStats",
    "Request",
    "RequestOutput",
    "StreamChunk",
]


@dataclass
class GenerationStats:
    """What one generation cost and bought. τ counts the bonus token: vanilla decoding has τ = 1."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: int = 0  # forward passes after the prefill
    accept_lengths: list[int] = field(default_factory=list)  # τ of each step
    draft_tokens: int = 0  # candidate tokens verified (proposed), the prefill's included
    accepted_per_position: list[int] = field(default_factory=list)  # accepted guesses at depth 1, 2, ...
    chain_steps: int = 0  # steps that verified a chain of copied or drafted tokens past the tree
    rest_steps: int = 0  # steps decoded root-only because the row's tree did not pay (TreeUse)
    queued_s: float = 0.0  # from the request's arrival to the start of its prefill
    prefill_s: float = 0.0
    total_s: float = 0.0  # from the start of the prefill to the last token
    forward_s: float = 0.0  # inside the model's forwards this request took part in (prefill included)
    prefill_forward_s: float = 0.0

    @property
    def tau(self) -> float:
        return sum(self.accept_lengths) / len(self.accept_lengths) if self.accept_lengths else 0.0

    @property
    def accepted_tokens(self) -> int:
        return sum(self.accepted_per_position)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    @property
    def overhead_share(self) -> float:
        """Share of the decode time (prefill excluded) spent outside the model's forward."""
        decode = self.total_s - self.prefill_s
        forward = self.forward_s - self.prefill_forward_s
        return max(0.0, decode - forward) / decode if decode > 0 else 0.0

    def histogram(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for length in self.accept_lengths:
            counts[length] = counts.get(length, 0) + 1
        return dict(sorted(counts.items()))

    def count_accepted(self, depth_count: int) -> None:
        """Add one step's accepted guesses: one each at depths 1..depth_count."""
        if len(self.accepted_per_position) < depth_count:
            self.accepted_per_position.extend([0] * (depth_count - len(self.accepted_per_position)))
        for i in range(depth_count):
            self.accepted_per_position[i] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "steps": self.steps,
            "accept_lengths": self.accept_lengths,
            "tau": self.tau,
            "tau_histogram": self.histogram(),
            "draft_tokens": self.draft_tokens,
            "accepted_tokens": self.accepted_tokens,
            "accepted_per_position": self.accepted_per_position,
            "tokens_per_s": self.tokens_per_s,
            "queued_s": self.queued_s,
            "prefill_s": self.prefill_s,
            "total_s": self.total_s,
            "forward_s": self.forward_s,
            "overhead_share": self.overhead_share,
        }


@dataclass
class StreamChunk:
    text: str
    token_ids: list[int]  # tokens committed by this step (after max_new_tokens / EOS truncation)
    accept_length: int  # τ of the step (0 for the prefill)
    origins: list[str] = field(default_factory=list)  # per token: "model", "ppd" or "lookup"


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    stats: GenerationStats
    finish_reason: str  # "eos", "stop", "length", "context" (context full) or "cancelled"


@dataclass
class RequestOutput:
    """What one engine step produced for one request."""

    request_id: str
    chunk: StreamChunk
    finished: bool
    result: GenerationResult | None = None  # once finished


class Request:
    """One sequence being decoded: the prompt, its settings, and what has been committed so far."""

    def __init__(
        self,
        request_id: str,
        prompt: list[int],
        config: GenerationConfig,
        tokenizer: Any,
        eos: set[int],
        tree_use: TreeUse | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.config = config
        self.eos = eos
        self.history = list(prompt)  # the prompt, then every committed token: what proposers read
        self.text = TextStream(tokenizer, config.stop)
        self.out: list[int] = []
        self.pieces: list[str] = []
        self.stats = GenerationStats(prompt_tokens=len(prompt))
        seed = config.seed if config.seed is not None else int(torch.randint(2**62, ()))
        self.generator = torch.Generator().manual_seed(seed)  # its own: a row's samples ignore the batch
        self.prefilled = 0  # prompt tokens already in the cache (a prefill may take several chunks)
        self.root = prompt[-1]  # the token whose step comes next (not yet in the cache)
        self.ranked: Ranked | None = None  # the prompt tokens' candidates for the next step
        self.pending: tuple[int, ...] = ()  # tokens to feed in front of the root (after a rewind)
        self.chain_room = config.lookup_chain  # inputs this row's chain may add; grows while accepted
        self.tree_use = tree_use or TreeUse.expecting(None)  # whether its tree pays, or rests
        self.finish: str | None = None
        self.cancelled = False
        self.arrived = time.perf_counter()
        self.started = 0.0

    @property
    def decoding(self) -> bool:
        """Prefill done: the request takes part in decode steps."""
        return self.prefilled == len(self.prompt)

    def commit(self, tokens: list[int], origins: list[str], accept_length: int) -> StreamChunk:
        """Take a step's committed tokens, up to EOS, ``max_new_tokens`` or a stop string."""
        take: list[int] = []
        for token in tokens:
            take.append(token)
            if token in self.eos:
                self.finish = "eos"
                break
            if len(self.out) + len(take) >= self.config.max_new_tokens:
                self.finish = "length"
                break
        self.out.extend(take)
        self.history.extend(tokens)
        piece = self.text.push([t for t in take if t not in self.eos])
        if self.text.stopped:
            self.finish = "stop"
        if self.finish is not None:
            piece += self.text.flush()
        self.pieces.append(piece)
        self.stats.new_tokens = len(self.out)
        self.stats.total_s = time.perf_counter() - self.started
        return StreamChunk(piece, take, accept_length, origins[: len(take)])

    def end(self, reason: str) -> StreamChunk:
        """Finish without new tokens (context full, cancelled); the held-back text comes out."""
        self.finish = reason
        tail = "" if reason == "cancelled" else self.text.flush()
        self.pieces.append(tail)
        self.stats.total_s = time.perf_counter() - self.started if self.started else 0.0
        return StreamChunk(tail, [], 0, [])

    def result(self) -> GenerationResult:
        assert self.finish is not None
        return GenerationResult("".join(self.pieces), list(self.out), self.stats, self.finish)
