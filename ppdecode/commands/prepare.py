"""`ppd prepare`: data, training, accuracy, tree and tune for a model, in one resumable run."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ppdecode.embedded import DEFAULT_MODEL

if TYPE_CHECKING:
    from ppdecode.prepare.stages import StageEvent

console = Console(stderr=True, soft_wrap=True)
STYLE = {"start": "bold cyan", "skip": "dim", "done": "green"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600} h {seconds % 3600 / 60:02.0f} min"


class ProgressView:
    """One line per stage event: [i/n] stage, what it does, its estimate and the run's remaining time.

    The stages' own progress bars (answers, training steps, accuracy, tuning) show rate and ETA in
    between.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, event: StageEvent) -> None:
        head = f"[{event.index}/{event.total}] {event.name}"
        if event.state == "start":
            eta = "" if event.estimate_s is None else f" — estimated {_duration(event.estimate_s)}"
            rest = "" if event.remaining_s is None else f", then ~{_duration(event.remaining_s)} more"
            line = f"{head}: {event.message}{eta}{rest}"
        elif event.state == "skip":
            line = f"{head} skipped: {event.message}"
        else:
            line = f"{head} done in {_duration(event.elapsed_s)}: {event.message}"
        elapsed = _duration(time.perf_counter() - self.start)
        console.print(f"[{STYLE.get(event.state, '')}]{line}[/] [dim](elapsed {elapsed})[/dim]")


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"held-out accuracy of the prompt tokens ({summary['accuracy_positions']} positions)")
    for column in ("distance", "top-1", "top-10", "top-1 untrained", "top-10 untrained"):
        table.add_column(column, justify="right")
    for row in summary["accuracy"]:
        table.add_row(str(row["distance"]), f"{row['top1']:.3f}", f"{row['top10']:.3f}",
                      f"{row['init_top1']:.3f}", f"{row['init_top10']:.3f}")
    return table


def speed_lines(summary: dict[str, Any]) -> list[str]:
    tree, measured = summary["tree"], summary["measured"]
    lines = [
        f"tree: budget {tree['budget']} (inputs per step at depth 0..N: "
        f"{' '.join(map(str, tree['inputs_per_depth']))}), expected τ {tree['expected_tau']:.2f}, "
        f"predicted {tree['predicted_speedup']:.2f}x over vanilla",
    ]
    if measured is not None:
        lines.append(
            f"measured on {measured['prompts']} held-out prompts x {measured['max_new_tokens']} tokens "
            f"(with prompt lookup, as `ppd generate` decodes): τ {measured['tau']:.2f}, "
            f"{measured['tokens_per_s']:.1f} tokens/s against "
            f"{measured['vanilla_tokens_per_s']:.1f} vanilla, {measured['speedup']:.2f}x"
        )
    return lines


def prepare_command(
    model: Annotated[
        str, typer.Option(help="Embedded model name, HF model directory or .gguf file.")
    ] = DEFAULT_MODEL,
    writer: Annotated[
        str | None,
        typer.Option(
            help="Model that writes the data's answers (default: MODEL itself). For a draft model, its "
            "target: inside speculative decoding the draft continues the target's text."
        ),
    ] = None,
    time_budget: Annotated[
        str, typer.Option(help="Wall time to spend: 90s, 45m, 2h, 1h30m (a plain number is minutes).")
    ] = "60m",
    out: Annotated[
        Path | None,
        typer.Option(help="Work folder (default: <cache>/prepare/<fingerprint>/<model>); rerun to resume."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="The dtype you will generate in: bfloat16, float32, float16 or auto.")
    ] = "auto",
    num_prompt_tokens: Annotated[int, typer.Option("--num-prompt-tokens", "-n", help="N prompt tokens.")] = 3,
    deep: Annotated[bool, typer.Option("--deep/--no-deep", help="Deep prompt tokens.")] = True,
    prompts: Annotated[
        int | None, typer.Option(help="Prompts to answer (default: what the time budget allows).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps (default: three epochs).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer the model writes for the data.")] = 112,
    max_prompt_tokens: Annotated[int, typer.Option(help="Longer prompts are cut to this many tokens.")] = 128,
    file: Annotated[
        list[Path] | None,
        typer.Option(
            "--file", help="Your own prompts (ShareGPT/Alpaca/JSONL/text), used first (repeatable)."
        ),
    ] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip malformed prompt-file lines.")] = False,
    docs_dir: Annotated[str | None, typer.Option(help="Python docs sources (html/_sources).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of prompt choice, cut points and data order.")] = 0,
    register: Annotated[
        bool,
        typer.Option("--register/--no-register", help="Store the result where `ppd generate` finds it."),
    ] = True,
    checkpoint_every: Annotated[int, typer.Option(help="Training steps between checkpoints.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Make PPD work for MODEL: self-distilled data, trained prompt tokens, accuracy, a tuned tree.

    Each stage is skipped when its output exists with the same settings, and training resumes from
    its checkpoint, so an interrupted run continues where it stopped when given the same options.
    """
    from ppdecode.prepare.pipeline import PrepareConfig, prepare
    from ppdecode.prepare.plan import parse_duration

    logging.getLogger("ppdecode").setLevel(logging.WARNING)
    config = PrepareConfig(
        model=model,
        writer=writer,
        time_budget_s=parse_duration(time_budget),
        out=None if out is None else str(out),
        device=device,
        dtype=dtype,
        num_prompt_tokens=num_prompt_tokens,
        deep=deep,
        prompts=prompts,
        steps=steps,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=max_prompt_tokens,
        files=tuple(str(f) for f in file or ()),
        skip_bad=skip_bad,
        docs_dir=docs_dir,
        seed=seed,
        register=register,
        checkpoint_every=checkpoint_every,
    )
    result = prepare(config, on_event=ProgressView())
    summary = result.summary
    if as_json:
        typer.echo(json.dumps(summary))
        return
    out_console = Console(soft_wrap=True)
    out_console.print(summary_table(summary))
    for line in speed_lines(summary):
        out_console.print(line)
    out_console.print(f"work folder: {result.work_dir}")
    if result.entry_dir is not None:
        out_console.print(
            f"registered in {result.entry_dir}: `ppd generate --model {model}` and "
            f"`ppdecode.load({model!r})` use these prompt tokens and this tree"
        )
    else:
        out_console.print(f"use them with --prompt-tokens {result.work_dir / 'tokens'} --tree "
                          f"{result.work_dir / 'tree.json'}")


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare_command)
