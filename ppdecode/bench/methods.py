"""The decoding methods a benchmark compares, behind one small interface.

Every method takes the same token ids and the same ``max_new_tokens`` and stops at the same EOS
ids, and reports the new tokens (EOS included, as our engine does), the wall time, the forward passes
after the prefill ("steps") and, where it can tell, τ of each step.

- ``EngineMethod``: our engine, vanilla (one token per forward) or with guesses: PPD with a named
  tree, prompt lookup alone, a draft model (alone, writing with PPD, or in the hybrid tree), greedy
  or lossless sampling at a temperature.
- ``HFMethod``: ``transformers`` ``generate()``: greedy, prompt-lookup decoding
  (``prompt_lookup_num_tokens``) or assisted generation with a draft model (``assistant_model``).
  Steps and τ come from a forward pre-hook that reads the cache length at each target forward: the
  cache grows by exactly the tokens the previous forward committed (HF crops rejected rows).

Both also decode a batch of prompts in one call (``run_batch``, the ``BatchMethod`` protocol): our
batched engine, and greedy ``generate()`` on left-padded prompts.
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ppdecode.config import GenerationConfig
from ppdecode.engine import Engine, GenerationResult
from ppdecode.models import LoadedModel

logger = logging.getLogger(__name__)


@dataclass
class RunOutput:
    token_ids: list[int]  # new tokens, EOS included when the method stopped on it
    seconds: float
    steps: int  # forward passes of the target model after the prefill
    accept_lengths: list[int] | None  # τ of each step; None when unknown
    finish_reason: str  # "eos" or "length" (or the engine's own reasons)
    draft_steps: int | None = None  # forwards of the draft model (our engine with a draft), else None


@dataclass
class BatchOutput:
    """One call on a batch of prompts: every row's output and the wall time of the whole call."""

    rows: list[RunOutput]  # in the order of the prompts; a row's ``seconds`` is its own time if known
    seconds: float


class Method(Protocol):
    name: str
    greedy: bool
    ppd: bool  # decodes with prompt tokens (the memory overhead is measured for these)

    def run(self, input_ids: list[int], max_new_tokens: int, seed: int | None) -> RunOutput:
        """Generate a continuation of ``input_ids``; ``seed`` matters only for sampling methods."""
        ...

    def extra_parameters(self) -> int:
        """Parameters this method adds to the base model (prompt tokens, a draft model)."""
        ...

    def extra_buffer_bytes(self) -> int:
        """Bytes of static buffers this method keeps besides parameters (tree buffers)."""
        ...


class BatchMethod(Method, Protocol):
    """A method that also decodes a batch of prompts in one call (``ppd bench --batch``)."""

    def run_batch(self, batch: Sequence[list[int]], max_new_tokens: int, seed: int | None) -> BatchOutput:
        """Generate a continuation of every prompt of ``batch``, all rows together."""
        ...


def _storage(tensor: torch.Tensor) -> int:
    """Where a tensor's numbers live: its data pointer, or the tensor itself for an opaque one (a
    packed weight has no storage to point at; it is shared only as the same object)."""
    try:
        return tensor.data_ptr()
    except RuntimeError:
        return id(tensor)


class EngineMethod:
    """Our engine: vanilla when ``use_ppd`` is False, else with the engine's guesses (its tree, its
    draft, prompt lookup unless ``lookup`` is False; ``lookup_chain`` as in the config)."""

    def __init__(
        self,
        name: str,
        engine: Engine,
        use_ppd: bool,
        temperature: float = 0.0,
        lookup: bool = True,
        lookup_chain: int = GenerationConfig.lookup_chain,
    ) -> None:
        if use_ppd and not engine.trees:
            raise ValueError(
                f"method {name}: guesses need an engine with prompt tokens, a draft or a proposer"
            )
        self.name = name
        self.engine = engine
        self.use_ppd = use_ppd
        self.temperature = temperature
        self.lookup = lookup
        self.lookup_chain = lookup_chain
        self.greedy = temperature == 0
        self.ppd = use_ppd

    def _config(self, max_new_tokens: int, seed: int | None) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            temperature=self.temperature,
            seed=None if self.greedy else seed,
            use_ppd=self.use_ppd,
            lookup=self.lookup,
            lookup_chain=self.lookup_chain,
            max_lookup_chain=max(self.lookup_chain, GenerationConfig.max_lookup_chain),
        )

    def run(self, input_ids: list[int], max_new_tokens: int, seed: int | None) -> RunOutput:
        config = self._config(max_new_tokens, seed)
        draft = self.engine.draft
        drafted = 0 if draft is None else draft.draft_steps
        start = time.perf_counter()
        result = self.engine.generate_ids(input_ids, config)
        output = _engine_output(result, time.perf_counter() - start)
        if draft is not None:
            output.draft_steps = draft.draft_steps - drafted
        return output

    def run_batch(self, batch: Sequence[list[int]], max_new_tokens: int, seed: int | None) -> BatchOutput:
        """Decode all of ``batch`` in one call of the batched engine (rows leave as they finish)."""
        config = self._config(max_new_tokens, seed)
        start = time.perf_counter()
        results = self.engine.generate_batch_ids([list(ids) for ids in batch], config)
        seconds = time.perf_counter() - start
        return BatchOutput([_engine_output(r, r.stats.total_s) for r in results], seconds)

    def extra_tensors(self) -> list[torch.Tensor]:
        """What the guesses add to the base model: its prompt tokens, and a draft model's own
        parameters and buffers (packed weights are buffers; not those it shares with the base model)
        and prompt tokens."""
        if not self.use_ppd:
            return []
        engine = self.engine
        tensors: list[torch.Tensor] = [*engine.prompt_tokens.parameters()] if engine.prompt_tokens else []
        if engine.draft is not None:
            draft = engine.draft.engine
            base, own = engine.base.model, draft.base.model
            shared = {_storage(t) for t in itertools.chain(base.parameters(), base.buffers())}
            tensors += [
                t for t in itertools.chain(own.parameters(), own.buffers()) if _storage(t) not in shared
            ]
            if draft.prompt_tokens is not None:
                tensors += list(draft.prompt_tokens.parameters())
        return tensors

    def extra_parameters(self) -> int:
        return sum(t.numel() for t in self.extra_tensors())

    def extra_buffer_bytes(self) -> int:
        """The per-depth buffers of every tree the engine (and its draft's engine) holds."""
        if not self.use_ppd:
            return 0
        engines = [self.engine] + ([self.engine.draft.engine] if self.engine.draft is not None else [])
        distinct = {id(s): s for e in engines for s in e.trees.values() if s is not None}
        return sum(_buffer_bytes(steps.by_depth) for steps in distinct.values())


def _engine_output(result: GenerationResult, seconds: float) -> RunOutput:
    stats = result.stats
    return RunOutput(
        list(result.token_ids), seconds, stats.steps, list(stats.accept_lengths), result.finish_reason
    )


def _buffer_bytes(buffers: Any) -> int:
    from ppdecode.bench.memory import tensors_bytes

    return tensors_bytes(buffers)


class HFMode(str, enum.Enum):
    GREEDY = "greedy"
    PROMPT_LOOKUP = "prompt-lookup"
    ASSISTED = "assisted"


class HFMethod:
    """``transformers`` ``generate()`` on the same model object, greedy (``do_sample=False``)."""

    def __init__(
        self,
        name: str,
        base: LoadedModel,
        mode: HFMode,
        prompt_lookup_num_tokens: int = 10,
        draft: LoadedModel | None = None,
    ) -> None:
        if mode is HFMode.ASSISTED and draft is None:
            raise ValueError("assisted generation needs a draft model: pass --draft-model")
        if prompt_lookup_num_tokens < 1:
            raise ValueError(f"prompt_lookup_num_tokens must be >= 1, got {prompt_lookup_num_tokens}")
        self.name = name
        self.base = base
        self.mode = mode
        self.draft = draft
        self.prompt_lookup_num_tokens = prompt_lookup_num_tokens
        self.greedy = True
        self.ppd = False
        eos = list(base.eos_token_ids)
        pad = base.tokenizer.pad_token_id
        self.kwargs: dict[str, Any] = {
            "do_sample": False,
            "eos_token_id": eos,
            "pad_token_id": pad if pad is not None else eos[0],
            "temperature": None,
            "top_p": None,
            "top_k": None,
        }
        if mode is HFMode.PROMPT_LOOKUP:
            self.kwargs["prompt_lookup_num_tokens"] = prompt_lookup_num_tokens
        elif mode is HFMode.ASSISTED:
            assert draft is not None
            self.kwargs["assistant_model"] = draft.model
            if draft.tokenizer.get_vocab() != base.tokenizer.get_vocab():
                # Universal assisted generation: HF re-tokenises between the two vocabularies.
                self.kwargs["tokenizer"] = base.tokenizer
                self.kwargs["assistant_tokenizer"] = draft.tokenizer

    @torch.inference_mode()
    def run(self, input_ids: list[int], max_new_tokens: int, seed: int | None) -> RunOutput:
        device = self.base.device
        ids = torch.tensor([input_ids], device=device)  # [1, P]
        mask = torch.ones_like(ids)
        starts: list[int] = []  # cache length at the start of each target forward

        def count(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            starts.append(int(cache.get_seq_length()) if cache is not None else -1)

        hook = self.base.model.register_forward_pre_hook(count, with_kwargs=True)
        try:
            start = time.perf_counter()
            out = self.base.model.generate(
                ids, attention_mask=mask, max_new_tokens=max_new_tokens, **self.kwargs
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        finally:
            hook.remove()
        tokens, finish = _until_eos(out[0, len(input_ids) :].tolist(), self.base.eos_token_ids)
        return RunOutput(
            tokens,
            seconds,
            max(len(starts) - 1, 0),
            _accept_lengths(starts, len(input_ids), len(tokens)),
            finish,
        )

    @torch.inference_mode()
    def run_batch(self, batch: Sequence[list[int]], max_new_tokens: int, seed: int | None) -> BatchOutput:
        """Batched greedy ``generate()``: prompts padded on the left, the padding masked out.

        ``generate()`` keeps a finished row in the batch (writing padding) until every row is done; a
        row's tokens are counted up to its EOS. Each forward gives every row one token, so a row's
        steps are its tokens after the prefill's, with τ = 1.
        """
        if self.mode is not HFMode.GREEDY:
            raise ValueError(
                f"{self.name}: transformers decodes {self.mode.value} at batch 1 only; batch only hf-greedy"
            )
        device = self.base.device
        pad = int(self.kwargs["pad_token_id"])
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long, device=device)  # [B, W]
        mask = torch.zeros_like(ids)  # [B, W]: 0 on the left padding
        for row, prompt in enumerate(batch):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, device=device)
            mask[row, width - len(prompt) :] = 1
        start = time.perf_counter()
        out = self.base.model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, **self.kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        rows: list[RunOutput] = []
        for new in out[:, width:].tolist():  # [B, new] with padding after a row's EOS
            tokens, finish = _until_eos(new, self.base.eos_token_ids)
            steps = max(len(tokens) - 1, 0)
            rows.append(RunOutput(tokens, seconds, steps, [1] * steps, finish))
        return BatchOutput(rows, seconds)

    def extra_parameters(self) -> int:
        if self.draft is None:
            return 0
        return sum(p.numel() for p in self.draft.model.parameters())

    def extra_buffer_bytes(self) -> int:
        return 0


def _until_eos(tokens: list[int], eos_token_ids: Sequence[int]) -> tuple[list[int], str]:
    """The new tokens up to and including the first EOS (what follows is padding), and why they end."""
    eos = set(eos_token_ids)
    cut = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
    return tokens[:cut], "eos" if cut and tokens[cut - 1] in eos else "length"


def _accept_lengths(starts: list[int], prompt_length: int, new_tokens: int) -> list[int] | None:
    """τ per step from the cache length at the start of each target forward: [prefill, step 1, ...].

    Step i committed ``starts[i + 1] - starts[i]`` tokens, and the last step the rest of the output (the
    final sequence, less its cache, less the token it fed in). The prefill is not a step (as in our
    engine), although in assisted generation it may already verify a draft and commit more than one token.
    """
    if not starts or any(s < 0 for s in starts):
        return None
    lengths = [b - a for a, b in zip(starts[1:], starts[2:], strict=False)]
    if len(starts) > 1:
        lengths.append(prompt_length + new_tokens - 1 - starts[-1])
    return lengths
