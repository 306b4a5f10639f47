"""A load generator for the server: concurrent streaming chat requests, timed per token.

``run_load(url, prompts, concurrency, max_tokens)`` keeps ``concurrency`` requests in flight until
every prompt is answered, and records for each request its time to first token (TTFT), end-to-end
latency, time per output token after the first (TPOT), its text and the server's usage and PPD
statistics. ``summarise`` turns a run into throughput and latency percentiles; ``format_table``
into the table ``scripts/bench_server.py`` prints.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class RequestRecord:
    prompt: str
    text: str = ""
    ttft_s: float = math.nan
    e2e_s: float = math.nan
    usage: dict[str, int] = field(default_factory=dict)
    ppd: dict[str, Any] = field(default_factory=dict)  # the last chunk's statistics (tau, steps, ...)
    finish_reason: str | None = None

    @property
    def completion_tokens(self) -> int:
        return self.usage.get("completion_tokens", 0)

    @property
    def tpot_s(self) -> float:
        n = self.completion_tokens
        return (self.e2e_s - self.ttft_s) / (n - 1) if n > 1 else math.nan


@dataclass
class LoadRun:
    concurrency: int
    wall_s: float
    records: list[RequestRecord]


async def stream_chat(
    client: httpx.AsyncClient,
    prompt: str,
    max_tokens: int,
    *,
    model: str | None = None,
    ppd: bool = True,
    temperature: float = 0.0,
) -> RequestRecord:
    """One streamed chat completion, timed from sending the request."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ppd": ppd,
    }
    record = RequestRecord(prompt)
    pieces: list[str] = []
    start = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            for choice in chunk["choices"]:
                content = choice["delta"].get("content")
                if content:
                    if not pieces:
                        record.ttft_s = time.perf_counter() - start
                    pieces.append(content)
                if choice.get("finish_reason"):
                    record.finish_reason = choice["finish_reason"]
            if chunk.get("usage"):
                record.usage = chunk["usage"]
            if chunk.get("ppd") and "tau" in chunk["ppd"]:
                record.ppd = chunk["ppd"]
    record.e2e_s = time.perf_counter() - start
    record.text = "".join(pieces)
    return record


async def run_load(
    url: str,
    prompts: Sequence[str],
    concurrency: int,
    max_tokens: int,
    *,
    api_key: str | None = None,
    model: str | None = None,
    ppd: bool = True,
    timeout_s: float = 600.0,
) -> LoadRun:
    """Answer every prompt, at most ``concurrency`` at a time; records keep the prompts' order."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s, limits=limits) as client:

        async def one(prompt: str) -> RequestRecord:
            async with gate:
                return await stream_chat(client, prompt, max_tokens, model=model, ppd=ppd)

        start = time.perf_counter()
        records = await asyncio.gather(*(one(p) for p in prompts))
        wall_s = time.perf_counter() - start
    return LoadRun(concurrency, wall_s, list(records))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN values are left out."""
    data = sorted(v for v in values if not math.isnan(v))
    if not data:
        return math.nan
    at = (len(data) - 1) * q / 100
    low, high = math.floor(at), math.ceil(at)
    return data[low] + (data[high] - data[low]) * (at - low)


def summarise(run: LoadRun) -> dict[str, Any]:
    records = run.records
    tokens = sum(r.completion_tokens for r in records)
    steps = sum(r.ppd.get("steps", 0) for r in records)
    committed = sum(sum(r.ppd.get("accept_lengths", [])) for r in records)
    summary: dict[str, Any] = {
        "concurrency": run.concurrency,
        "requests": len(records),
        "output_tokens": tokens,
        "wall_s": run.wall_s,
        "throughput_tok_s": tokens / run.wall_s if run.wall_s > 0 else 0.0,
        "requests_per_s": len(records) / run.wall_s if run.wall_s > 0 else 0.0,
        "tau": committed / steps if steps else math.nan,
    }
    for name, values in (("ttft", [r.ttft_s for r in records]), ("tpot", [r.tpot_s for r in records])):
        for q in (50, 90, 99):
            summary[f"{name}_p{q}_ms"] = percentile(values, q) * 1000
    return summary


COLUMNS = (
    ("concurrency", "clients", "{:d}"),
    ("requests", "requests", "{:d}"),
    ("output_tokens", "tokens", "{:d}"),
    ("throughput_tok_s", "tok/s", "{:.1f}"),
    ("speedup", "× one-at-a-time", "{:.2f}"),
    ("tau", "τ", "{:.2f}"),
    ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}"),
    ("ttft_p90_ms", "TTFT p90 ms", "{:.0f}"),
    ("ttft_p99_ms", "TTFT p99 ms", "{:.0f}"),
    ("tpot_p50_ms", "TPOT p50 ms", "{:.0f}"),
    ("tpot_p90_ms", "TPOT p90 ms", "{:.0f}"),
    ("tpot_p99_ms", "TPOT p99 ms", "{:.0f}"),
)


def add_speedups(summaries: list[dict[str, Any]]) -> None:
    """Throughput over the one-client run's (when there is one)."""
    single = next((s for s in summaries if s["concurrency"] == 1), None)
    for s in summaries:
        s["speedup"] = s["throughput_tok_s"] / single["throughput_tok_s"] if single else math.nan


def format_table(summaries: Sequence[dict[str, Any]]) -> str:
    header = [title for _, title, _ in COLUMNS]
    rows = [[fmt.format(s[key]) if key in s else "-" for key, _, fmt in COLUMNS] for s in summaries]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
