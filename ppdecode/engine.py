"""The decoding engine (METHOD §3, §8): many requests, one forward per step, each row with its own tree.

A step plans every running row (propose: the tree for its depth, filled with its guesses), runs one
batched forward, verifies each row, and commits its root and accepted nodes to the cache; the last
accepted node's logits give the row's next root (the bonus token) and its prompt slots the next
candidates. A request joins with its prefill (the same step at depth 0 with the context in front,
chunked so that a long prompt does not stall the batch) and leaves when it is done: continuous
batching. Vanilla decoding is the root-only tree without prompt slots, on the same code path.

Running rows occupy cache rows 0..n-1 (a request that leaves is replaced by the last row), so a
step's forward reads one contiguous block of the cache; a request in prefill sits at row n.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any

import torch

from ppdecode.cache import KVCache, bytes_per_token
from ppdecode.config import GenerationConfig
from ppdecode.models import LoadedModel
from ppdecode.planner import (
    COPY_STEPS,
    MAX_STEP_INPUTS,
    VANILLA,
    VANILLA_TREE,
    TreeUse,
    next_chain_room,
    plan_row,
    reach,
    with_own_tree,
)
from ppdecode.prompt_tokens import PromptTokens
from ppdecode.proposers import (
    MODEL,
    PPD,
    LookupProposer,
    PromptTokenProposer,
    Proposal,
    Proposer,
    Ranked,
    RowContext,
)
from ppdecode.proposers.draft import DraftProposer
from ppdecode.request import (
    GenerationResult,
    GenerationStats,
    Request,
    RequestOutput,
    StreamChunk,
)
from ppdecode.step import RowPlan, build_inputs, run_forward
from ppdecode.tree.buffers import TreeSteps
from ppdecode.tree.spec import TreeSpec
from ppdecode.verify import batch_verdicts

logger = logging.getLogger(__name__)

__all__ = [
    "Engine",
    "GenerationResult",
    "GenerationStats",
    "GenerationStream",
    "RequestOutput",
    "StreamChunk",
]

DEFAULT_CACHE_MEMORY = 2 * 1024**3  # bytes the KV cache may take unless told otherwise

Prompt = str | list[dict[str, str]]
TreeChoice = TreeSpec | Mapping[int, TreeSpec | None]  # one tree, or one per batch size (None: vanilla)


class GenerationStream:
    """Iterates over a generation's chunks; ``result`` holds the totals (partial if stopped early)."""

    def __init__(self, engine: Engine, request_id: str) -> None:
        self._engine = engine
        self.request_id = request_id
        self._result: GenerationResult | None = None
        self._chunks = self._run()

    def _run(self) -> Generator[StreamChunk, None, None]:
        engine, rid = self._engine, self.request_id
        try:
            while self._result is None:
                for out in engine.step():
                    if out.request_id == rid:
                        self._result = out.result
                        yield out.chunk
        finally:
            if self._result is None:  # the caller stopped reading: free the row now
                self._result = engine._drop(rid)

    def __iter__(self) -> Iterator[StreamChunk]:
        return self._chunks

    def __next__(self) -> StreamChunk:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()

    @property
    def result(self) -> GenerationResult:
        if self._result is None:
            raise ValueError("the generation is still running: read the stream to its end (or close it)")
        return self._result


class Engine:
    """Decodes with one base model, its prompt tokens and tree(s); ``prompt_tokens=None`` = vanilla.

    ``tree`` is one tree spec, or a mapping from batch size to the spec used from that many active
    rows on (None there: vanilla decoding, where trees stop paying). ``max_batch`` rows decode at
    once; more requests wait. The KV cache (``max_batch`` × ``max_length``) is allocated on first
    use, sized from the model's context and ``cache_memory`` bytes.
    """

    def __init__(
        self,
        base: LoadedModel,
        prompt_tokens: PromptTokens | None = None,
        tree: TreeChoice | None = None,
        proposer: Proposer | None = None,
        *,
        draft: DraftProposer | None = None,
        max_batch: int = 8,
        max_length: int | None = None,
        cache_memory: int | None = None,
        prefill_chunk: int = 512,
    ) -> None:
        if prompt_tokens is not None and tree is None:
            raise ValueError("a tree spec is needed to decode with prompt tokens")
        if max_batch < 1 or prefill_chunk < 1:
            raise ValueError(f"max_batch and prefill_chunk must be >= 1, got {max_batch}, {prefill_chunk}")
        self.base = base
        self.tokenizer = base.tokenizer
        self.prompt_tokens = prompt_tokens
        self.trees: dict[int, TreeSteps | None] = {}  # from this many active rows on
        if prompt_tokens is not None and tree is not None:
            choice = {1: tree} if isinstance(tree, TreeSpec) else dict(tree)
            for size, spec in sorted(choice.items()):
                if spec is not None and spec.num_prompt_tokens != prompt_tokens.num_prompt_tokens:
                    raise ValueError(
                        f"the tree is built for {spec.num_prompt_tokens} prompt tokens but the prompt "
                        f"tokens have {prompt_tokens.num_prompt_tokens}; build a tree for them with "
                        "`ppd build-tree`"
                    )
                self.trees[size] = None if spec is None else TreeSteps(spec, prompt_tokens.ensemble)
            if 1 not in self.trees:
                raise ValueError("the tree choice needs an entry for batch size 1")
        specs = [t.spec for t in self.trees.values() if t is not None]
        self.tree: TreeSpec | None = specs[0] if specs else None
        self.top_k = max((spec.max_top_k for spec in specs), default=1)
        # A given proposer is used as is; otherwise the prompt tokens' own guesses (with a draft
        # model's tokens at rank 0 and past the tree, given a draft), joined by prompt lookup when the
        # generation's config asks for it (the default). Without prompt tokens a proposer's
        # continuation is verified alone, as a chain under the root (a draft, prompt lookup alone).
        self.proposer = proposer
        self.draft = draft
        if prompt_tokens is None and (proposer is not None or draft is not None):
            self.trees = {1: TreeSteps(VANILLA_TREE)}
        self._plain_proposer: Proposer = draft or PromptTokenProposer()
        self._lookup_proposer = LookupProposer(self._plain_proposer)
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        per_token = bytes_per_token(base.model)
        budget = DEFAULT_CACHE_MEMORY if cache_memory is None else cache_memory
        fits = budget // (max_batch * per_token) - MAX_STEP_INPUTS
        self.max_length = min(base.context_length, max_length or base.context_length, fits)
        if self.max_length < 2 or (max_length is not None and max_length > self.max_length):
            wanted = max_length or base.context_length
            need = max_batch * (wanted + MAX_STEP_INPUTS) * per_token
            raise ValueError(
                f"a KV cache of {max_batch} rows x {wanted} tokens needs {need / 2**20:.0f} "
                f"MiB but the budget is {budget / 2**20:.0f} MiB (and the model reads at most "
                f"{base.context_length}); raise cache_memory, or lower max_batch or max_length"
            )
        self._cache: KVCache | None = None
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []  # running[i] sits at cache row i
        self._prefilling: Request | None = None  # at cache row len(running)
        self._requests: dict[str, Request] = {}
        self._ids = itertools.count()

    # ---- set-up ---------------------------------------------------------------------------------
    @property
    def cache(self) -> KVCache:
        assert self._cache is not None, "the cache is made when the first request is admitted"
        return self._cache

    def _make_room(self, request: Request) -> None:
        """Grow the cache (rarely: sizes double) so that it holds this request next to the running ones.

        The cache grows with use up to ``max_batch`` x ``max_length``, the limits checked against the
        memory budget: a short generation does not pay for the longest one.
        """
        rows = len(self._running) + 1
        positions = min(self.max_length, len(request.prompt) + request.config.max_new_tokens + 1)
        cache = self._cache
        if cache is None:
            self._cache = KVCache(self.base.model, rows, positions + MAX_STEP_INPUTS)
            return
        if rows > cache.rows:
            rows = min(self.max_batch, max(rows, 2 * cache.rows))
        if positions + MAX_STEP_INPUTS > cache.capacity:
            positions = min(self.max_length, max(positions, 2 * (cache.capacity - MAX_STEP_INPUTS)))
        cache.grow(rows, positions + MAX_STEP_INPUTS)  # grow keeps what is larger already
        logger.debug("KV cache: %s", self.cache_report())

    def cache_report(self) -> dict[str, Any]:
        """Rows and length of the KV cache: its limits and what is allocated now, in bytes."""
        per_token = bytes_per_token(self.base.model)
        cache = self._cache
        return {
            "max_rows": self.max_batch,
            "max_length": self.max_length,
            "max_bytes": self.max_batch * (self.max_length + MAX_STEP_INPUTS) * per_token,
            "rows": cache.rows if cache else 0,
            "capacity": cache.capacity if cache else 0,
            "bytes": cache.nbytes if cache else 0,
            "bytes_per_token": per_token,
        }

    def encode(self, prompt: Prompt, chat: bool = True) -> list[int]:
        """Token ids of a prompt; a chat model gets its chat template unless ``chat=False``."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("the prompt is empty; give some text to continue or answer")
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = prompt
            if not messages:
                raise ValueError("the conversation is empty; give at least one message")
        if chat and self.base.is_chat:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not isinstance(prompt, str):
            raise ValueError("a list of messages needs a chat model (or chat=True)")
        return list(self.tokenizer(prompt)["input_ids"])

    # ---- one generation, or a batch of them ---------------------------------------------------------
    def stream(
        self, prompt: Prompt, config: GenerationConfig | None = None, **overrides: Any
    ) -> GenerationStream:
        """Text as it is committed, one chunk per step; the stream's ``result`` holds the totals."""
        config = (config or GenerationConfig()).updated(**overrides)
        return self.stream_ids(self.encode(prompt, chat=config.chat), config)

    def stream_ids(self, input_ids: list[int], config: GenerationConfig | None = None) -> GenerationStream:
        return GenerationStream(self, self.add_request(input_ids, config or GenerationConfig()))

    def generate(
        self, prompt: Prompt, config: GenerationConfig | None = None, **overrides: Any
    ) -> GenerationResult:
        return self._finish(self.stream(prompt, config, **overrides))

    def generate_ids(self, input_ids: list[int], config: GenerationConfig | None = None) -> GenerationResult:
        return self._finish(self.stream_ids(input_ids, config))

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | Sequence[GenerationConfig] | None = None,
        **overrides: Any,
    ) -> list[GenerationResult]:
        """One result per prompt, in order; all are decoded together (``max_batch`` rows at a time)."""
        configs = self._configs(config, len(prompts), overrides)
        ids = [self.encode(p, chat=c.chat) for p, c in zip(prompts, configs, strict=True)]
        return self.generate_batch_ids(ids, configs)

    def generate_batch_ids(
        self,
        input_ids: Sequence[list[int]],
        config: GenerationConfig | Sequence[GenerationConfig] | None = None,
    ) -> list[GenerationResult]:
        configs = self._configs(config, len(input_ids), {})
        rids = [self.add_request(ids, c) for ids, c in zip(input_ids, configs, strict=True)]
        results: dict[str, GenerationResult] = {}
        try:
            while len(results) < len(rids):
                for out in self.step():
                    if out.result is not None:
                        results[out.request_id] = out.result
        finally:
            for rid in rids:
                if rid not in results:
                    self._drop(rid)
        return [results[rid] for rid in rids]

    @staticmethod
    def _configs(
        config: GenerationConfig | Sequence[GenerationConfig] | None, count: int, overrides: dict[str, Any]
    ) -> list[GenerationConfig]:
        if config is None or isinstance(config, GenerationConfig):
            return [(config or GenerationConfig()).updated(**overrides)] * count
        if len(config) != count:
            raise ValueError(f"got {len(config)} configs for {count} prompts: give one, or one per prompt")
        return [c.updated(**overrides) for c in config]

    @staticmethod
    def _finish(stream: GenerationStream) -> GenerationResult:
        for _ in stream:
            pass
        return stream.result

    # ---- requests -------------------------------------------------------------------------------
    def add_request(
        self, input_ids: list[int], config: GenerationConfig, request_id: str | None = None
    ) -> str:
        """Queue a request; it joins the batch at a coming step. Returns its id."""
        if not input_ids:
            raise ValueError("the prompt is empty; give some text to continue or answer")
        if len(input_ids) >= self.max_length:
            raise ValueError(
                f"the prompt has {len(input_ids)} tokens but this engine holds at most {self.max_length} "
                f"per sequence ({self.base.name} reads {self.base.context_length}); shorten the prompt"
            )
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self._requests:
            raise ValueError(f"request id {rid!r} is already in use")
        eos = set() if config.ignore_eos else set(self.base.eos_token_ids)
        tree_use = TreeUse.expecting(self.trees.get(1))
        request = Request(rid, list(input_ids), config, self.tokenizer, eos, tree_use)
        self._requests[rid] = request
        self._waiting.append(request)
        return rid

    def cancel(self, request_id: str) -> None:
        """Stop a request; its row is freed at the next step, which reports it as "cancelled"."""
        request = self._requests.get(request_id)
        if request is not None:
            request.cancelled = True

    def rewind(self, request_id: str, history: list[int], guesses: Ranked | None = None) -> None:
        """Make a decoding request's sequence ``history`` (its prompt, then the tokens taken as
        committed, the next root last): the cache keeps what it shares with the request's own
        sequence, the rest is fed in front of the next step's root. A draft model's engine is driven
        this way: the target model's verdict replaces what the draft wrote.

        ``guesses`` are candidates past the new root, kept by the caller from a step that read the
        same context (``history`` but its root): prompt slots never see the root they guess past, so
        their guesses hold for whatever root the verdict chose. Without them the next step is root-only."""
        request = self._requests[request_id]
        if not request.decoding or request not in self._running:
            raise ValueError(f"request {request_id!r} is not decoding yet: step the engine first")
        if not history:
            raise ValueError("rewind to an empty sequence: give at least one token")
        if guesses is not None and self.prompt_tokens is None:
            raise ValueError("rewind with guesses needs an engine with prompt tokens")
        if history == request.history:
            return
        row = self._row_of(request)
        old = request.history
        keep = min(self.cache.lengths[row], len(history) - 1)
        shared = next((i for i in range(keep) if old[i] != history[i]), keep)
        self.cache.lengths[row] = shared
        request.history = list(history)
        request.pending = tuple(history[shared:-1])
        request.root, request.ranked = history[-1], None if request.tree_use.resting else guesses

    def sequence(self, request_id: str) -> list[int]:
        """A request's prompt and every token committed to it so far (the next root last)."""
        return self._requests[request_id].history

    def guesses(self, request_id: str) -> Ranked | None:
        """The prompt tokens' candidates for a request's next step: [D][top_k] token ids, depth i
        guessing the token i past its next root (None without prompt tokens or before decoding)."""
        return self._requests[request_id].ranked

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def num_running(self) -> int:
        return len(self._running) + (self._prefilling is not None)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    # ---- the loop -------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """One scheduling step: drop cancelled requests, prefill newcomers, one decode forward."""
        outputs = [self._release(r, r.end("cancelled")) for r in list(self._requests.values()) if r.cancelled]
        budget = self.prefill_chunk
        while budget > 0 and (self._prefilling is not None or self._waiting):
            if self._prefilling is None:
                if len(self._running) >= self.max_batch:
                    break
                self._prefilling = self._waiting.popleft()
                self._make_room(self._prefilling)
                self._prefilling.started = time.perf_counter()
                self._prefilling.stats.queued_s = self._prefilling.started - self._prefilling.arrived
            request = self._prefilling
            fed, committed = self._prefill(request, budget)
            budget -= fed
            if committed is not None:
                outputs.extend(self._after_step(request, *committed, prefill=True))
                self._prefilling = None
                if request.finish is None:
                    self._running.append(request)
        if self._running:
            outputs.extend(self._decode())
        return outputs

    def _prefill(self, request: Request, budget: int) -> tuple[int, tuple[list[int], list[str]] | None]:
        """Feed the next chunk of a request's prompt; the last chunk carries the depth-0 tree.

        Returns the prompt tokens fed and, after the last chunk, the tokens it committed.
        """
        row, start = len(self._running), request.prefilled
        rest = request.prompt[start:]
        timer = time.perf_counter()
        if len(rest) > budget + 1:  # a chunk of context only: root-only "tree", nothing to verify
            chunk = rest[:budget]
            plan = RowPlan(start, (chunk[-1],), VANILLA, tuple(chunk[:-1]))
            inputs = build_inputs(self.base, self.prompt_tokens, [plan], row, self.cache.capacity)
            run_forward(self.base, inputs, self.cache)
            self.cache.commit(row, start, list(range(len(chunk))))
            request.prefilled += len(chunk)
            request.stats.forward_s += time.perf_counter() - timer
            return len(chunk), None
        trees = self._trees(len(self._running) + 1)
        plan = self._plan([request], trees, tuple(rest[:-1]))[0]
        committed = self._forward_and_commit([request], [plan], row, trees)[0]
        request.prefilled = len(request.prompt)
        request.stats.prefill_s = time.perf_counter() - request.started
        request.stats.prefill_forward_s = request.stats.forward_s
        return len(rest), committed

    def _decode(self) -> list[RequestOutput]:
        """propose → verify → commit for every running row, in one forward."""
        rows = self._running
        trees = self._trees(len(rows))
        plans = self._plan(rows, trees)  # 1. propose
        committed = self._forward_and_commit(rows, plans, 0, trees)  # 2-4. forward, verify, commit
        outputs: list[RequestOutput] = []
        for request, (tokens, origins) in zip(list(rows), committed, strict=True):
            request.stats.steps += 1
            outputs.extend(self._after_step(request, tokens, origins))
        return outputs

    def _forward_and_commit(
        self, rows: list[Request], plans: list[RowPlan], first_row: int, trees: TreeSteps | None
    ) -> list[tuple[list[int], list[str]]]:
        """Forward, verify and commit one step (of ``trees``); per row the committed tokens and who
        guessed each."""
        step_ratio = None if trees is None else trees.step_ratio
        timer = time.perf_counter()
        inputs = build_inputs(self.base, self.prompt_tokens, plans, first_row, self.cache.capacity)
        hidden = run_forward(self.base, inputs, self.cache)  # [B, C, H]
        verdicts = batch_verdicts(
            self.base,
            hidden,
            plans,
            inputs.logits_from,
            [r.config for r in rows],
            [r.generator for r in rows],
            self.top_k,
        )
        elapsed = time.perf_counter() - timer  # the forward and the output layer (in verification)
        committed = []
        for b, (request, plan, row_verdict) in enumerate(zip(rows, plans, verdicts, strict=True)):
            verdict = row_verdict.verdict
            self.cache.commit(first_row + b, plan.start + len(plan.prefix), [0, *verdict.accepted])
            request.stats.forward_s += elapsed
            request.stats.draft_tokens += plan.buffers.num_nodes
            request.stats.chain_steps += plan.buffers.chain_length > 0
            request.stats.rest_steps += request.tree_use.resting
            request.stats.count_accepted(len(verdict.accepted))
            request.chain_room = next_chain_room(request, plan, len(verdict.accepted))
            request.root, request.ranked = verdict.bonus, row_verdict.ranked
            request.pending = ()
            origins = [plan.origins[i] for i in verdict.accepted] + [MODEL]
            request.tree_use.after_step(
                step_ratio, PPD in plan.origins, origins.count(PPD), len(verdict.accepted) + 1
            )
            if request.tree_use.resting:
                request.ranked = None  # a resting row's steps are root-only: no candidates to fill
            committed.append(([*verdict.accepted_tokens, verdict.bonus], origins))
        return committed

    def _after_step(
        self, request: Request, tokens: list[int], origins: list[str], prefill: bool = False
    ) -> list[RequestOutput]:
        """Commit the step's tokens to the request; release it when it is done."""
        chunk = request.commit(tokens, origins, 0 if prefill else len(tokens))
        self._proposer(request.config).accepted(request.request_id, request.history, len(tokens) - 1)
        if not prefill:
            request.stats.accept_lengths.append(len(tokens))
        length = self.cache.lengths[self._row_of(request)]
        if request.finish is None and length + 1 >= self.max_length:
            extra = request.end("context")
            chunk = StreamChunk(chunk.text + extra.text, chunk.token_ids, chunk.accept_length, chunk.origins)
        if request.finish is not None:
            return [self._release(request, chunk)]
        return [RequestOutput(request.request_id, chunk, False)]

    def _row_of(self, request: Request) -> int:
        if request is self._prefilling:
            return len(self._running)
        return self._running.index(request) if request in self._running else len(self._running)

    def _release(self, request: Request, chunk: StreamChunk) -> RequestOutput:
        """Take a finished or cancelled request out; the last running row moves into its place."""
        if request.finish is None:
            request.finish = "cancelled"
        self._requests.pop(request.request_id, None)
        self._proposer(request.config).reset(request.request_id)
        if request in self._waiting:
            self._waiting.remove(request)
        cache = self._cache
        if request is self._prefilling:
            self._prefilling = None
            if cache is not None:
                cache.lengths[len(self._running)] = 0
        elif request in self._running:
            assert cache is not None
            row, last = self._running.index(request), len(self._running) - 1
            if row != last:
                cache.move(last, row)
                self._running[row] = self._running[last]
            else:
                cache.lengths[row] = 0
            self._running.pop()
            if self._prefilling is not None:  # keep the prefill right after the running rows
                cache.move(last + 1, last)
        return RequestOutput(request.request_id, chunk, True, request.result())

    def _drop(self, request_id: str) -> GenerationResult | None:
        """Cancel a request at once (its stream was abandoned); returns its partial result."""
        request = self._requests.get(request_id)
        if request is None:
            return None
        return self._release(request, request.end("cancelled")).result

    # ---- planning a row's step ------------------------------------------------------------------------
    def _trees(self, active: int) -> TreeSteps | None:
        """The tree for this many active rows: the entry with the largest batch size not above it."""
        sizes = [size for size in self.trees if size <= active]
        return self.trees[max(sizes)] if sizes else None

    def _proposer(self, config: GenerationConfig) -> Proposer:
        if self.proposer is not None:
            return self.proposer
        return self._lookup_proposer if config.lookup else self._plain_proposer

    def _plan(
        self, requests: list[Request], trees: TreeSteps | None, prefix: tuple[int, ...] = ()
    ) -> list[RowPlan]:
        """1. propose: each row's tree for its depth, filled with its proposer's guesses.

        Each proposer is asked once for all its rows. ``prefix`` is a prefill's context (one row);
        a decoding row feeds what a rewind left pending in front of its root.
        """
        proposals: list[Proposal | None] = [None] * len(requests)
        # a row resting its tree takes root-only steps, with a chain where its proposer continues
        row_trees = [COPY_STEPS if trees is not None and r.tree_use.resting else trees for r in requests]
        fill = None if trees is None else trees.max_inputs
        wheres = [reach(request, steps, fill) for request, steps in zip(requests, row_trees, strict=True)]
        asks: dict[int, tuple[Proposer, list[int], list[RowContext]]] = {}
        for i, (request, where) in enumerate(zip(requests, wheres, strict=True)):
            if where is not None:
                proposer = self._proposer(request.config)
                _, rows, contexts = asks.setdefault(id(proposer), (proposer, [], []))
                rows.append(i)
                contexts.append(RowContext(request.request_id, request.ranked, request.history, sum(where)))
        for proposer, rows, contexts in asks.values():
            for i, made in zip(rows, proposer.propose(contexts), strict=True):
                proposals[i] = made
        plans = []
        for request, steps, where, proposal in zip(requests, row_trees, wheres, proposals, strict=True):
            steps, where = with_own_tree(steps, where, proposal)
            prefilling = bool(prefix) or not request.decoding
            start = request.prefilled if prefilling else self.cache.lengths[self._row_of(request)]
            front = prefix if prefilling else request.pending
            plans.append(plan_row(request, steps, where, proposal, start, self.max_length, front))
        return plans
