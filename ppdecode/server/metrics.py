"""Prometheus metrics of one server, named after vLLM's (``vllm:spec_decode_*`` → ``ppd:spec_decode_*``).

Vocabulary as vLLM's: a *draft* is one decoding step (one forward pass), its *draft tokens* are the
guesses it verified, and *accepted tokens* are the guesses that were right; the bonus token is not
counted, so the mean accepted length τ = 1 + accepted / drafts. ``position`` is the depth of a guess,
from 0 (the token right after the root), as in vLLM. Every instance has its own registry, so two
apps in one process (tests) never share counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ppdecode.engine import GenerationResult

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    """Counters the scheduler thread updates as steps run and requests finish."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ppd:num_requests",
            "Requests finished, by the engine's finish reason.",
            ["finish_reason"],
            registry=r,
        )
        self.rejected = Counter(
            "ppd:num_requests_rejected", "Requests refused because the admission queue was full.", registry=r
        )
        self.failed = Counter(
            "ppd:num_requests_failed", "Requests that failed inside the engine.", registry=r
        )
        self.prompt_tokens = Counter("ppd:prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter(
            "ppd:generation_tokens", "Tokens generated for finished requests.", registry=r
        )
        self.drafts = Counter("ppd:spec_decode_num_drafts", "Decoding steps (forward passes).", registry=r)
        self.draft_tokens = Counter(
            "ppd:spec_decode_num_draft_tokens", "Guessed tokens verified (proposed).", registry=r
        )
        self.accepted_tokens = Counter(
            "ppd:spec_decode_num_accepted_tokens",
            "Guessed tokens accepted (bonus tokens not counted).",
            registry=r,
        )
        self.accepted_per_pos = Counter(
            "ppd:spec_decode_num_accepted_tokens_per_pos",
            "Accepted guesses by depth (0 = the token after the root).",
            ["position"],
            registry=r,
        )
        self.waiting = Gauge(
            "ppd:num_requests_waiting", "Requests admitted but not yet decoding.", registry=r
        )
        self.running = Gauge("ppd:num_requests_running", "Rows in the running batch.", registry=r)
        self.step_time = Histogram(
            "ppd:step_time_seconds",
            "Time of one engine step (all running rows).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "ppd:time_to_first_token_seconds",
            "From arrival to the first token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "ppd:e2e_request_latency_seconds",
            "From arrival to the last token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def observe_finished(self, result: GenerationResult, ttft_s: float | None, e2e_s: float) -> None:
        stats = result.stats
        self.requests.labels(finish_reason=result.finish_reason).inc()
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.generation_tokens.inc(stats.new_tokens)
        self.drafts.inc(stats.steps)
        self.draft_tokens.inc(stats.draft_tokens)
        self.accepted_tokens.inc(sum(stats.accepted_per_position))
        for position, count in enumerate(stats.accepted_per_position):
            self.accepted_per_pos.labels(position=str(position)).inc(count)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        self.e2e.observe(e2e_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
