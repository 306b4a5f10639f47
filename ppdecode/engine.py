"""The decoding loop (METHOD §3): prefill, then propose → verify → commit, one forward per step.

Each step feeds the model [root | candidate nodes | prompt slots] of the tree for the current depth,
verifies the candidates against the model's own predictions, commits the root and the accepted
nodes to the cache, and takes the next root (the bonus token) and the next prompt distributions
from the last accepted node. The prefill is the same step at depth 0 with the context in front.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ppdecode.cache import KVCache
from ppdecode.config import AcceptMode, GenerationConfig
from ppdecode.forward import ModelRunner, step_attend
from ppdecode.models import LoadedModel
from ppdecode.prompt_tokens import PromptTokens
from ppdecode.proposers import LookupProposer, PromptTokenProposer, Proposal, Proposer
from ppdecode.text import TextStream
from ppdecode.tree.buffers import TreeBuffers, build_buffers, rank0_reach
from ppdecode.tree.spec import TreeNode, TreeSpec
from ppdecode.verify import Verdict, verify_greedy, verify_lossless, verify_typical

logger = logging.getLogger(__name__)

# Vanilla decoding is the root-only tree without prompt slots: one token in, one token out.
VANILLA_TREE = TreeSpec(num_prompt_tokens=1, top_k=(1,), trees=((TreeNode((0,), 0),),), root_slots=0)

Prompt = str | list[dict[str, str]]


@dataclass
class GenerationStats:
    """What one generation cost and bought. τ counts the bonus token: vanilla decoding has τ = 1."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: int = 0  # forward passes after the prefill
    accept_lengths: list[int] = field(default_factory=list)  # τ of each step
    prefill_s: float = 0.0
    total_s: float = 0.0
    forward_s: float = 0.0  # inside the model's forward (prefill included)

    @property
    def tau(self) -> float:
        return sum(self.accept_lengths) / len(self.accept_lengths) if self.accept_lengths else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    @property
    def overhead_share(self) -> float:
        """Share of the decode time (prefill excluded) spent outside the model's forward."""
        decode = self.total_s - self.prefill_s
        forward = self.forward_s - self._prefill_forward_s
        return max(0.0, decode - forward) / decode if decode > 0 else 0.0

    _prefill_forward_s: float = 0.0

    def histogram(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for length in self.accept_lengths:
            counts[length] = counts.get(length, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "steps": self.steps,
            "accept_lengths": self.accept_lengths,
            "tau": self.tau,
            "tau_histogram": self.histogram(),
            "tokens_per_s": self.tokens_per_s,
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


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    stats: GenerationStats
    finish_reason: str  # "eos", "stop", "length" (max_new_tokens) or "context" (context full)


@dataclass
class _StepResult:
    verdict: Verdict
    prompt_logits: torch.Tensor | None  # [n_slots, vocab] of the last accepted node (None: vanilla)


class Engine:
    """Decodes with one base model, its prompt tokens and a tree spec; ``prompt_tokens=None`` = vanilla."""

    def __init__(
        self,
        base: LoadedModel,
        prompt_tokens: PromptTokens | None = None,
        tree: TreeSpec | None = None,
        proposer: Proposer | None = None,
    ) -> None:
        if prompt_tokens is not None and tree is None:
            raise ValueError("a tree spec is needed to decode with prompt tokens")
        if (
            prompt_tokens is not None
            and tree is not None
            and tree.num_prompt_tokens != prompt_tokens.num_prompt_tokens
        ):
            raise ValueError(
                f"the tree is built for {tree.num_prompt_tokens} prompt tokens but the prompt tokens have "
                f"{prompt_tokens.num_prompt_tokens}; build a tree for them with `ppd build-tree`"
            )
        self.base = base
        self.tokenizer = base.tokenizer
        self.prompt_tokens = prompt_tokens
        self.tree = tree
        # A given proposer is used as is; otherwise the prompt tokens' own guesses, joined by prompt
        # lookup when the generation's config asks for it (the default).
        self.proposer = proposer
        self._plain_proposer = PromptTokenProposer()
        self._lookup_proposer = LookupProposer(self._plain_proposer)
        self.runner = ModelRunner(base)
        device = self.runner.device
        self.vanilla_buffers = build_buffers(VANILLA_TREE, 0).to(device)
        # One buffer set per depth, on the model's device, built once: a step only indexes into them.
        self.tree_buffers: list[TreeBuffers] = []
        self.rank0_reach: list[int] = []  # per depth: how deep the tree's rank-0 path goes
        self._chain_buffers: dict[tuple[int, int, int], TreeBuffers] = {}  # (depth, chain_at, length)
        if tree is not None and prompt_tokens is not None:
            self.tree_buffers = [
                build_buffers(tree, depth, prompt_tokens.ensemble).to(device)
                for depth in range(tree.num_prompt_tokens + 1)
            ]
            self.rank0_reach = [rank0_reach(tree, depth) for depth in range(tree.num_prompt_tokens + 1)]
        # The largest step the tree feeds: a lookup chain may fill any step up to this plus lookup_chain.
        self.max_tree_inputs = max((b.num_inputs for b in self.tree_buffers), default=1)

    # ---- public API ---------------------------------------------------------------------------
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

    def stream(
        self, prompt: Prompt, config: GenerationConfig | None = None, **overrides: Any
    ) -> Iterator[StreamChunk]:
        """Yield text as it is committed, one chunk per step; ``last_result`` holds the totals after."""
        config = (
            replace(config or GenerationConfig(), **overrides)
            if overrides
            else (config or GenerationConfig())
        )
        ids = self.encode(prompt, chat=config.chat)
        yield from self.stream_ids(ids, config)

    def generate(
        self, prompt: Prompt, config: GenerationConfig | None = None, **overrides: Any
    ) -> GenerationResult:
        for _ in self.stream(prompt, config, **overrides):
            pass
        return self.last_result

    def generate_ids(self, input_ids: list[int], config: GenerationConfig | None = None) -> GenerationResult:
        for _ in self.stream_ids(input_ids, config or GenerationConfig()):
            pass
        return self.last_result

    def stream_ids(self, input_ids: list[int], config: GenerationConfig) -> Iterator[StreamChunk]:
        """The loop around ``_decode``: max_new_tokens, EOS, stop strings, text and stats."""
        stats = GenerationStats(prompt_tokens=len(input_ids))
        text = TextStream(self.tokenizer, config.stop)
        out: list[int] = []
        pieces: list[str] = []
        finish = "context"  # unless something else stops it first, the loop ends when the context is full
        eos = set(self.base.eos_token_ids)
        start = time.perf_counter()
        for committed, accept_length in self._decode(input_ids, config, stats):
            take: list[int] = []
            for token in committed:
                take.append(token)
                if token in eos:
                    finish = "eos"
                    break
                if len(out) + len(take) >= config.max_new_tokens:
                    finish = "length"
                    break
            out.extend(take)
            piece = text.push([t for t in take if t not in eos])
            if text.stopped:
                finish = "stop"
            pieces.append(piece)
            stats.total_s = time.perf_counter() - start
            stats.new_tokens = len(out)
            yield StreamChunk(piece, take, accept_length)
            if finish != "context":
                break
        tail = text.flush()
        if tail:
            pieces.append(tail)
            yield StreamChunk(tail, [], 0)
        stats.total_s = time.perf_counter() - start
        stats.new_tokens = len(out)
        self.last_result = GenerationResult("".join(pieces), out, stats, finish)

    # ---- the loop ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def _decode(
        self, input_ids: list[int], config: GenerationConfig, stats: GenerationStats
    ) -> Iterator[tuple[list[int], int]]:
        """Yield (committed tokens, τ) per forward, forever or until the context is full."""
        if not input_ids:
            raise ValueError("the prompt is empty; give some text to continue or answer")
        context = self.base.context_length
        if len(input_ids) >= context:
            raise ValueError(
                f"the prompt has {len(input_ids)} tokens but {self.base.name} reads at most {context}; "
                "shorten the prompt"
            )
        use_ppd = config.use_ppd and self.prompt_tokens is not None
        generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        cache = KVCache()
        history = list(input_ids)  # the prompt, then every committed token: what the proposer reads

        # 1. Prefill: the context, with its last token as the root of a depth-0 tree.
        start = time.perf_counter()
        result = self._step(
            cache, input_ids[:-1], input_ids[-1], None, use_ppd, config, generator, history, stats
        )
        stats.prefill_s = time.perf_counter() - start
        stats._prefill_forward_s = stats.forward_s
        root, prompt_logits = result.verdict.bonus, result.prompt_logits
        committed = [*result.verdict.accepted_tokens, root]  # a lookup chain may guess past the root
        history.extend(committed)
        yield committed, 0

        # 2. Steps: propose → verify → commit, until the caller stops asking or the context is full.
        while cache.length + 1 < context:
            result = self._step(cache, [], root, prompt_logits, use_ppd, config, generator, history, stats)
            verdict = result.verdict
            root, prompt_logits = verdict.bonus, result.prompt_logits
            committed = [*verdict.accepted_tokens, root]
            history.extend(committed)
            stats.steps += 1
            stats.accept_lengths.append(len(committed))
            yield committed, len(committed)

    def _step(
        self,
        cache: KVCache,
        prefix: list[int],
        root: int,
        prompt_logits: torch.Tensor | None,  # [D, vocab] or None
        use_ppd: bool,
        config: GenerationConfig,
        generator: torch.Generator | None,
        history: list[int],
        stats: GenerationStats,
    ) -> _StepResult:
        runner = self.runner
        device = runner.device
        cache_length = cache.length
        depth = 0 if prompt_logits is None else prompt_logits.shape[0]
        candidates, chain_at, chain = None, 0, list[int]()
        chain_room = 0
        if config.lookup and config.lookup_chain and self.tree_buffers:
            # a step with a smaller tree (after a chain, or at depth 0) has room for a longer copy
            chain_room = config.lookup_chain + self.max_tree_inputs - self.tree_buffers[depth].num_inputs
        if use_ppd and (depth or chain_room):
            assert self.tree is not None
            reach = depth + chain_room
            proposal = self._proposer(config).propose(prompt_logits, self.tree.max_top_k, history, reach)
            candidates = proposal.candidates  # [D, K] or None
            chain_at, chain = self._chain(proposal, depth, chain_room)
        buffers = self._buffers(depth, use_ppd, cache_length + len(prefix), chain_at, len(chain))
        root_tensor = torch.tensor([*prefix, root], device=device)  # [P + 1]
        pieces = [root_tensor]
        if buffers.num_nodes > buffers.chain_length:
            assert candidates is not None
            pieces.append(candidates.flatten()[buffers.candidate_index])  # [tree nodes]
        if buffers.chain_length:
            pieces.append(torch.tensor(chain, device=device))
        token_ids = torch.cat(pieces) if len(pieces) > 1 else root_tensor
        embeds = runner.embed(token_ids)  # [P + 1 + num_nodes, H]
        p = len(prefix)
        num_token_inputs = p + 1 + buffers.num_nodes
        slot_positions = torch.arange(num_token_inputs, p + buffers.num_inputs, device=device)
        if buffers.num_inputs > buffers.num_nodes + 1:
            assert self.prompt_tokens is not None
            slot_embeds = self.prompt_tokens.slot_embeddings(
                buffers.slot_prompt_index, buffers.slot_member, embeds.dtype
            )  # [num_slot_inputs, H]
            embeds = torch.cat([embeds, slot_embeds])
        offsets = buffers.position_offsets
        positions = cache_length + torch.cat([torch.arange(p, device=device), p + offsets])  # [P + T]
        trivial = buffers.num_inputs == 1
        attend = None if trivial else step_attend(cache_length, p, buffers.attend)

        timer = time.perf_counter()
        keep = buffers.num_inputs  # logits of the tree's inputs only, none for a prefill's context
        if self.prompt_tokens is not None and not trivial:
            with self.prompt_tokens.active(slot_positions, buffers.slot_prompt_index):
                logits = runner.forward(embeds, positions, attend, cache, keep)  # [T, vocab]
        else:
            logits = runner.forward(embeds, positions, attend, cache, keep)
        if device.type == "cuda":
            torch.cuda.synchronize()
        stats.forward_s += time.perf_counter() - timer

        token_logits = logits[: 1 + buffers.num_nodes]  # [1 + num_nodes, vocab]
        tree_tokens = token_ids[p:]
        verdict = self._verify(token_logits, tree_tokens, buffers, config, generator)
        cache.commit(cache_length + p, [0, *verdict.accepted])

        slots = buffers.node_slots[verdict.last]
        next_prompt_logits = None
        if slots:
            index = buffers.slot_inputs[verdict.last, :slots]  # [slots, V]
            # one copy of the rows, not two: without an ensemble there is nothing to average
            one = index.shape[1] == 1
            next_prompt_logits = logits[index[:, 0]] if one else logits[index].mean(dim=1)  # [slots, vocab]
        return _StepResult(verdict, next_prompt_logits)

    def _proposer(self, config: GenerationConfig) -> Proposer:
        if self.proposer is not None:
            return self.proposer
        return self._lookup_proposer if config.lookup else self._plain_proposer

    def _chain(self, proposal: Proposal, depth: int, room: int) -> tuple[int, list[int]]:
        """Where the lookup chain hangs (a depth on the rank-0 path) and its tokens; [] for none.

        The chain continues the proposal's continuation below the deepest rank-0 node that holds it.
        """
        continuation = proposal.continuation
        if not room or not continuation:
            return 0, []
        ranked = proposal.candidates[:, 0].tolist() if proposal.candidates is not None else []
        chain_at = 0
        limit = min(self.rank0_reach[depth], len(continuation))
        while chain_at < limit and ranked[chain_at] == continuation[chain_at]:
            chain_at += 1
        return chain_at, list(continuation[chain_at : chain_at + room])

    def _buffers(
        self, depth: int, use_ppd: bool, committed: int, chain_at: int = 0, chain_length: int = 0
    ) -> TreeBuffers:
        if not use_ppd:
            return self.vanilla_buffers
        if chain_length:
            key = (depth, chain_at, chain_length)
            buffers = self._chain_buffers.get(key)
            if buffers is None:
                assert self.tree is not None and self.prompt_tokens is not None
                spec, ensemble = self.tree, self.prompt_tokens.ensemble
                buffers = build_buffers(spec, depth, ensemble, chain_at, chain_length).to(self.runner.device)
                self._chain_buffers[key] = buffers
        else:
            buffers = self.tree_buffers[depth]
        if committed + buffers.num_inputs > self.base.context_length:
            return self.vanilla_buffers  # near the end of the context: no room for a tree
        return buffers

    def _verify(
        self,
        logits: torch.Tensor,
        tokens: torch.Tensor,
        buffers: TreeBuffers,
        config: GenerationConfig,
        generator: torch.Generator | None,
    ) -> Verdict:
        if config.accept is AcceptMode.GREEDY:
            return verify_greedy(logits, tokens, buffers)
        if config.accept is AcceptMode.TYPICAL:
            return verify_typical(
                logits,
                tokens,
                buffers,
                config.temperature,
                config.top_k,
                config.top_p,
                config.posterior_threshold,
                config.posterior_alpha,
                generator,
            )
        return verify_lossless(
            logits, tokens, buffers, config.temperature, config.top_k, config.top_p, generator
        )
