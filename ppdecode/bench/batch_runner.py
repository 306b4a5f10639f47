"""The batch benchmark loop (``ppd bench --batch``): throughput of vanilla, PPD and transformers per B.

Order of work (docs/benchmarks.md, "Batches"):
1. Load the base model once; the methods share it: our batched engine without guesses (``vanilla``),
   with the prompt tokens and the tree ``ppd generate`` uses here (``ppd``), and transformers' batched
   greedy ``generate()`` on left-padded prompts (``hf-greedy``).
2. Encode the first turn of every question once (chat template where the prompt is a chat turn).
3. For each batch size B: group the prompts into consecutive batches of B, warm every method up on the
   first batch (short, untimed), then run every method on every batch, the order of the methods
   rotated per batch, so that machine drift falls on every method alike.
4. Compare every row's tokens with vanilla's row on the same batch (greedy agreement).
5. Memory probes (untimed): peak tensor bytes of one vanilla and one PPD batch at each B.
6. Write ``records.jsonl`` (one line per method and batch, then one summary line per method and B),
   ``summary.json`` and the plot.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ppdecode.bench import prompts as prompt_sets
from ppdecode.bench.batch import (
    BATCH_FAMILIES,
    BatchRecord,
    BatchRow,
    BatchSummary,
    Remainder,
    compare_rows,
    group_batches,
    summarise_batches,
)
from ppdecode.bench.environment import environment
from ppdecode.bench.memory import PeakRSS, TensorPeak, module_bytes
from ppdecode.bench.methods import BatchMethod, BatchOutput, EngineMethod, HFMethod, HFMode
from ppdecode.bench.metrics import median
from ppdecode.bench.prompts import BenchPrompt
from ppdecode.bench.runner import (
    WARMUP_TOKENS,
    default_output_dir,
    load_prompt_tokens,
    method_info,
    ppd_overhead,
    spec_info,
    torch_threads,
    write_run,
)
from ppdecode.engine import Engine
from ppdecode.kernels import packed_copy
from ppdecode.models import DEFAULT_MODEL, LoadedModel, load_model
from ppdecode.tune.resolve import AUTO, resolve_trees

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16)


@dataclass
class BatchBenchConfig:
    """What the batch mode runs; ``tree`` is the PPD tree (``auto``: the one ``ppd generate`` uses)."""

    prompts: str = prompt_sets.BUILTIN
    categories: tuple[str, ...] = ()
    limit: int | None = None
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    max_new_tokens: int = 128
    methods: tuple[str, ...] = ()  # () = all of BATCH_FAMILIES
    remainder: Remainder = Remainder.WRAP
    model: str = DEFAULT_MODEL
    prompt_tokens: str | None = "default"
    tree: str = AUTO
    repeat: int = 1
    warmup: int = 1
    memory_probes: int = 1  # batches per B probed for memory (0 = none)
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    pack: bool = True  # our engines decode with packed linear layers (ppdecode.kernels), as ppd generate
    output_dir: Path | None = None

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        self.batch_sizes = tuple(self.batch_sizes)
        self.remainder = Remainder.of(self.remainder)
        unknown = [m for m in self.methods if m not in BATCH_FAMILIES]
        if unknown:
            raise ValueError(
                f"methods {unknown} do not run in batches: choose from {', '.join(BATCH_FAMILIES)}"
            )
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch sizes must be >= 1, got {list(self.batch_sizes)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.repeat < 1:
            raise ValueError(f"--repeat must be >= 1, got {self.repeat}")
        if self.warmup < 0 or self.memory_probes < 0:
            raise ValueError("--warmup and --memory-probes must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")

    @property
    def families(self) -> tuple[str, ...]:
        return self.methods or BATCH_FAMILIES


@dataclass
class BatchBenchResult:
    records: list[BatchRecord]
    summaries: list[BatchSummary]
    summary: dict[str, Any]
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def build_batch_methods(
    config: BatchBenchConfig, base: LoadedModel, max_length: int | None = None
) -> tuple[list[BatchMethod], dict[str, Any]]:
    """The methods to compare, in ``BATCH_FAMILIES`` order; also what each adds. ``transformers`` runs
    ``base`` as loaded, our engines a copy with packed linear layers (``config.pack``).

    Our engines hold ``max(batch_sizes)`` rows of ``max_length`` tokens (None: the model's context).
    """
    max_batch = max(config.batch_sizes)
    methods: list[BatchMethod] = []
    hf_base, base = base, packed_copy(base) if config.pack else base
    for family in BATCH_FAMILIES:
        if family not in config.families:
            continue
        if family == "vanilla":
            engine = Engine(base, max_batch=max_batch, max_length=max_length)
            methods.append(EngineMethod("vanilla", engine, use_ppd=False))
        elif family == "ppd":
            tokens = load_prompt_tokens(config.prompt_tokens, base)
            # the engine's choice: one tree, or one per number of active rows (a tuned profile's)
            trees = resolve_trees(base, tokens, config.tree, allow_tune=False)
            engine = Engine(base, tokens, trees, max_batch=max_batch, max_length=max_length)
            methods.append(EngineMethod("ppd", engine, use_ppd=True))
        else:
            methods.append(HFMethod("hf-greedy", hf_base, HFMode.GREEDY))
    info = {
        m.name: method_info(
            m, {"trees_by_batch_size": _trees(m.engine)} if isinstance(m, EngineMethod) and m.ppd else {}
        )
        for m in methods
    }
    return methods, info


def _trees(engine: Engine) -> dict[str, Any]:
    """{from this many active rows on: the tree (None: vanilla decoding)}."""
    return {
        str(size): None if steps is None else spec_info(steps.spec) for size, steps in engine.trees.items()
    }


def run_batch_bench(
    config: BatchBenchConfig,
    base: LoadedModel | None = None,
    progress: Callable[[str], None] | None = None,
) -> BatchBenchResult:
    """Run the batch benchmark ``config`` describes; ``base`` reuses an already loaded model."""
    with torch_threads(config.threads):
        return _run(config, base, progress)


def _run(
    config: BatchBenchConfig, base: LoadedModel | None, progress: Callable[[str], None] | None
) -> BatchBenchResult:
    from ppdecode.bench.plots import save_batch_plots
    from ppdecode.bench.report import build_batch_summary

    questions = prompt_sets.select(
        prompt_sets.load_prompt_set(config.prompts), config.categories, config.limit
    )
    plan = {b: group_batches(len(questions), b, config.remainder) for b in config.batch_sizes}
    if base is None:
        base = load_model(config.model, device=config.device, dtype=config.dtype)
    env = environment(base)
    # The first turn of every question: a batch row is one prompt, not a conversation.
    encoder = Engine(base)  # its cache is allocated on first use: never, here
    prompt_ids = [encoder.encode(q.turns[0], chat=q.chat) for q in questions]
    # The cache holds what the longest answer needs, as a server sized for these requests would.
    max_length = min(base.context_length, max(map(len, prompt_ids)) + config.max_new_tokens)
    methods, method_info = build_batch_methods(config, base, max_length)
    cut = sum(len(q.turns) > 1 for q in questions)
    say = progress or (lambda message: logger.info("%s", message))
    say(
        f"{len(questions)} prompts (first turns{f'; {cut} later turns left out' if cut else ''}) in batches "
        f"of {', '.join(map(str, config.batch_sizes))} × {', '.join(m.name for m in methods)}, "
        f"{config.max_new_tokens} new tokens, remainder {config.remainder.value}, "
        f"{env['device']} {env['dtype']}"
    )

    with torch.inference_mode():
        records = _timed_runs(methods, questions, prompt_ids, plan, config, base.tokenizer, say)
        memory = _memory_probes(methods, prompt_ids, plan, config, base, say)
    compare_rows(records)
    summaries = summarise_batches(records)

    if hasattr(os, "getloadavg"):
        env["load_average_at_end"] = list(os.getloadavg())  # other work on the machine skews timings
    out_dir = config.output_dir or default_output_dir()
    summary = build_batch_summary(summaries, _config_json(config), env, method_info, memory)
    lines = [r.to_json() for r in records] + [s.to_json() for s in summaries]
    files = write_run(out_dir, lines, summary)
    files.update(save_batch_plots(summary, out_dir))
    return BatchBenchResult(records, summaries, summary, out_dir, files)


def _timed_runs(
    methods: Sequence[BatchMethod],
    questions: Sequence[BenchPrompt],
    prompt_ids: Sequence[list[int]],
    plan: dict[int, list[list[int]]],
    config: BatchBenchConfig,
    tokenizer: Any,
    say: Callable[[str], None],
) -> list[BatchRecord]:
    records: list[BatchRecord] = []
    turn = 0  # counts batches over all sizes: the method going first rotates through all of them
    for size, batches in plan.items():
        first = [prompt_ids[i] for i in batches[0]]
        for _ in range(config.warmup):  # per size: kernels and allocations differ with the shapes
            for method in methods:
                method.run_batch(first, min(config.max_new_tokens, WARMUP_TOKENS), config.seed)
        for index, batch in enumerate(batches):
            shift = turn % len(methods)
            turn += 1
            ids = [prompt_ids[i] for i in batch]
            runs: dict[str, list[tuple[BatchOutput, int]]] = {m.name: [] for m in methods}
            for _ in range(config.repeat):
                for method in [*methods[shift:], *methods[:shift]]:
                    with PeakRSS() as rss:
                        output = method.run_batch(ids, config.max_new_tokens, config.seed)
                    runs[method.name].append((output, rss.peak))
            batch_questions = [questions[i] for i in batch]
            made = [_record(m, size, index, batch_questions, runs[m.name], tokenizer) for m in methods]
            records += made
            line = ", ".join(f"{r.method} {r.tokens_per_s:.1f}" for r in made)
            say(f"B={size} [{index + 1}/{len(batches)}]: tokens/s {line}")
    return records


def _record(
    method: BatchMethod,
    size: int,
    index: int,
    questions: Sequence[BenchPrompt],
    runs: list[tuple[BatchOutput, int]],
    tokenizer: Any,
) -> BatchRecord:
    """The method's record of one batch: rows of the first repeat (greedy repeats are identical)."""
    output = runs[0][0]
    rows = [
        BatchRow(
            question_id=q.question_id,
            category=q.category,
            new_tokens=len(o.token_ids),
            steps=o.steps,
            accept_lengths=o.accept_lengths,
            finish_reason=o.finish_reason,
            token_ids=o.token_ids,
            text=tokenizer.decode(o.token_ids, skip_special_tokens=True),
        )
        for q, o in zip(questions, output.rows, strict=True)
    ]
    seconds = [out.seconds for out, _ in runs]
    return BatchRecord(
        method=method.name,
        batch_size=size,
        batch_index=index,
        seconds=median(seconds),
        rows=rows,
        seconds_repeats=seconds,
        peak_rss_bytes=max(peak for _, peak in runs),
        cache=_cache_report(method),
    )


def _cache_report(method: BatchMethod) -> dict[str, Any] | None:
    """Our engine's report on its KV cache (bytes, rows, length), where the engine gives one."""
    if not isinstance(method, EngineMethod):
        return None
    report = getattr(method.engine, "cache_report", None)
    return dict(report()) if callable(report) else None


def _memory_probes(
    methods: Sequence[BatchMethod],
    prompt_ids: Sequence[list[int]],
    plan: dict[int, list[list[int]]],
    config: BatchBenchConfig,
    base: LoadedModel,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Per B: peak tensor bytes of vanilla and of PPD on the first batches, and PPD's overhead."""
    by_name = {m.name: m for m in methods}
    vanilla, ppd = by_name.get("vanilla"), by_name.get("ppd")
    if not config.memory_probes or not isinstance(vanilla, EngineMethod) or not isinstance(ppd, EngineMethod):
        return {"by_batch_size": {}}
    weights = module_bytes(base.model)
    by_size: dict[str, Any] = {}
    for size, batches in plan.items():
        peaks: list[dict[str, int]] = []
        for batch in batches[: config.memory_probes]:
            ids = [prompt_ids[i] for i in batch]
            peak: dict[str, int] = {}
            for method in (vanilla, ppd):
                with TensorPeak(base.device) as probe:
                    method.run_batch(ids, config.max_new_tokens, config.seed)
                peak[method.name] = probe.peak
            peaks.append(peak)
        step = max(p["ppd"] - p["vanilla"] for p in peaks)
        entry = {
            "peak_tensor_bytes": {name: max(p[name] for p in peaks) for name in ("vanilla", "ppd")},
            **ppd_overhead(ppd, step, weights),
        }
        by_size[str(size)] = entry
        say(
            f"memory probe B={size}: vanilla {entry['peak_tensor_bytes']['vanilla'] / 1e6:.2f} MB, "
            f"ppd {entry['peak_tensor_bytes']['ppd'] / 1e6:.2f} MB, "
            f"PPD overhead {entry['overhead_percent_of_weights']:.2f}% of the weights"
        )
    return {
        "method": "tensor accounting" if base.device.type != "cuda" else "torch.cuda.max_memory_allocated",
        "model_weight_bytes": weights,
        "by_batch_size": by_size,
    }


def _config_json(config: BatchBenchConfig) -> dict[str, Any]:
    data = asdict(config)
    data["remainder"] = config.remainder.value
    data["output_dir"] = str(config.output_dir) if config.output_dir else None
    data["families"] = list(config.families)
    return data
