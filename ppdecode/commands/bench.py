"""`ppd bench`: PPD against vanilla decoding and transformers' drafting methods, interleaved per question.

With ``--batch 1,2,4,8,16`` it measures throughput per batch size instead: vanilla, PPD and transformers'
batched greedy ``generate()`` on the same batches of prompts.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ppdecode.commands.generate import DraftLengthOption, DraftScheduleOption
from ppdecode.embedded import DEFAULT_MODEL
from ppdecode.proposers.draft import DraftSchedule

# Tables are wide: without a terminal (a log file, CI) rich would wrap them at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 150)

QUICK = {"limit": 8, "max_new_tokens": 64, "repeat": 1, "warmup": 1, "memory_probes": 1}


def _split(values: list[str] | None) -> tuple[str, ...]:
    return tuple(part.strip() for value in values or () for part in value.split(",") if part.strip())


def _named_trees(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    trees: list[tuple[str, str]] = []
    for value in values or ():
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).stem, value
        if not name or not path:
            raise ValueError(f"--tree {value!r}: give PATH or NAME=PATH")
        trees.append((name, path))
    return tuple(trees)


def bench(
    prompts: Annotated[
        str, typer.Option(help="builtin, humaneval, humaneval:PATH or a Spec-Bench/MT-Bench .jsonl.")
    ] = "builtin",
    categories: Annotated[
        list[str] | None, typer.Option(help="Only these categories (comma list, repeatable).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most N questions, balanced over categories.")] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(help="New tokens per turn (default 256; 64 with --quick; 128 with --batch)."),
    ] = None,
    methods: Annotated[
        list[str] | None,
        typer.Option(
            help="Method families: vanilla, hf-greedy, hf-lookup, hf-assisted, ppd, ppd-plain (comma list)."
        ),
    ] = None,
    baseline: Annotated[str, typer.Option(help="Method the speed-ups are relative to.")] = "hf-greedy",
    model: Annotated[
        str, typer.Option(help="Embedded model name, HF model directory or .gguf file.")
    ] = DEFAULT_MODEL,
    prompt_tokens: Annotated[
        str, typer.Option(help="Prompt-token artifact directory, or 'default'.")
    ] = "default",
    default_tree: Annotated[
        str | None,
        typer.Option(
            help="Tree of the ppd:default method (default: the packaged 'default'). ppd:tuned, the tree "
            "`ppd generate` uses here, is added when this device has one. With --batch: the tree of ppd "
            "(default: the one `ppd generate` uses)."
        ),
    ] = None,
    tree: Annotated[
        list[str] | None,
        typer.Option(help="Extra PPD tree as PATH or NAME=PATH (repeatable): method ppd:NAME."),
    ] = None,
    temperature: Annotated[
        float, typer.Option(help="> 0 adds lossless-sampling runs of vanilla and PPD.")
    ] = 0.0,
    draft_model: Annotated[
        str | None,
        typer.Option(
            help="Draft model of the methods draft, draft-ppd, hybrid and hf-assisted ('default': the "
            "model's demonstration draft)."
        ),
    ] = None,
    draft_length: DraftLengthOption = 4,
    draft_schedule: DraftScheduleOption = DraftSchedule.ADAPTIVE,
    prompt_lookup_num_tokens: Annotated[int, typer.Option(help="Tokens proposed by prompt lookup.")] = 10,
    repeat: Annotated[int | None, typer.Option(help="Timed runs per method and question (median).")] = None,
    warmup: Annotated[int | None, typer.Option(help="Untimed warm-up rounds before timing.")] = None,
    memory_probes: Annotated[int | None, typer.Option(help="Questions for the untimed memory probe.")] = None,
    seed: Annotated[int, typer.Option(help="Base seed of the sampling runs.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto (bf16 on CPU).")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads (default: torch's).")] = None,
    pack: Annotated[
        bool,
        typer.Option(
            "--pack/--no-pack",
            help="Our engine decodes with linear layers packed for this CPU (as ppd generate does); "
            "transformers always runs the model as loaded.",
        ),
    ] = True,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default runs/bench/<timestamp>).")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="8 questions × 64 tokens × the default methods.")
    ] = False,
    batch: Annotated[
        list[str] | None,
        typer.Option(
            help="Batch sizes (comma list), e.g. 1,2,4,8,16: throughput of vanilla, ppd and hf-greedy "
            "decoding the same prompts in batches of each size, instead of the batch-1 comparison."
        ),
    ] = None,
    remainder: Annotated[
        str,
        typer.Option(
            help="With --batch, prompts left over: wrap (fill the last batch from the first) or drop."
        ),
    ] = "wrap",
    show: Annotated[
        list[Path] | None,
        typer.Option(
            help="Print the tables of an earlier run (its summary.json or directory) and exit; several "
            "runs, or --categories, pool their records into one table."
        ),
    ] = None,
) -> None:
    """Benchmark PPD against vanilla decoding, transformers greedy, prompt lookup and assisted generation."""
    if show:
        _show(show, _split(categories))
        return
    # settings both modes take as given
    common: dict[str, Any] = {
        "prompts": prompts, "categories": _split(categories), "methods": _split(methods), "model": model,
        "prompt_tokens": prompt_tokens, "seed": seed, "device": device, "dtype": dtype, "threads": threads,
        "pack": pack, "output_dir": out,
    }
    if batch:
        if tree or temperature or draft_model:
            raise ValueError(
                "--batch runs vanilla, ppd and hf-greedy: drop --tree, --temperature, --draft-model"
            )
        from ppdecode.bench.batch import Remainder, parse_batch_sizes
        from ppdecode.bench.batch_runner import BatchBenchConfig, run_batch_bench
        from ppdecode.bench.report import batch_tables

        sizes = parse_batch_sizes(batch)
        batch_config = BatchBenchConfig(
            limit=limit if limit is not None else (max(sizes) if quick else None),
            batch_sizes=sizes,
            max_new_tokens=max_new_tokens or (QUICK["max_new_tokens"] if quick else 128),
            remainder=Remainder.of(remainder),
            tree=default_tree or "auto",
            repeat=repeat if repeat is not None else 1,
            warmup=warmup if warmup is not None else 1,
            memory_probes=memory_probes if memory_probes is not None else 1,
            **common,
        )
        logging.getLogger("ppdecode.bench").setLevel(logging.INFO)
        batch_result = run_batch_bench(batch_config, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
        console.print(batch_tables(batch_result.summary))
        console.print(f"[dim]wrote {', '.join(str(p) for p in batch_result.files.values())}[/dim]")
        return
    from ppdecode.bench.runner import BenchConfig, run_bench

    preset = (
        QUICK
        if quick
        else {"limit": None, "max_new_tokens": 256, "repeat": 1, "warmup": 1, "memory_probes": 1}
    )
    config = BenchConfig(
        limit=limit if limit is not None else preset["limit"],
        max_new_tokens=max_new_tokens if max_new_tokens is not None else int(preset["max_new_tokens"] or 0),
        baseline=baseline,
        tree=default_tree or "default",
        trees=_named_trees(tree),
        temperature=temperature,
        draft_model=draft_model,
        draft_length=draft_length,
        draft_schedule=draft_schedule.value,
        prompt_lookup_num_tokens=prompt_lookup_num_tokens,
        repeat=repeat if repeat is not None else int(preset["repeat"] or 1),
        warmup=warmup if warmup is not None else int(preset["warmup"] or 0),
        memory_probes=memory_probes if memory_probes is not None else int(preset["memory_probes"] or 0),
        **common,
    )
    logging.getLogger("ppdecode.bench").setLevel(logging.INFO)
    result = run_bench(config, progress=lambda message: console.print(f"[dim]{message}[/dim]"))
    from ppdecode.bench.report import tables

    console.print(tables(result.summary))
    console.print(f"[dim]wrote {', '.join(str(p) for p in result.files.values())}[/dim]")


def _show(show: list[Path], categories: tuple[str, ...]) -> None:
    """Print the tables of earlier runs: one run as it was, or several pooled (batch-1 runs only)."""
    from ppdecode.bench.report import batch_tables, pooled_summary, tables

    runs = [path.parent if path.is_file() else path for path in show]
    missing = [str(run) for run in runs if not (run / "summary.json").is_file()]
    if missing:
        raise ValueError(f"--show: no summary.json in {', '.join(missing)}")
    first = json.loads((runs[0] / "summary.json").read_text())
    batched = [
        str(run) for run in runs if json.loads((run / "summary.json").read_text()).get("mode") == "batch"
    ]
    if batched and (len(runs) > 1 or categories):
        raise ValueError(
            f"--show: batch runs ({', '.join(batched)}) are shown one at a time, without --categories"
        )
    if batched:
        console.print(batch_tables(first))
    elif len(runs) == 1 and not categories:
        console.print(tables(first))
    else:
        console.print(tables(pooled_summary(runs, categories)))


def register(app: typer.Typer) -> None:
    app.command()(bench)
