"""`ppd build-tree` (accuracies → tree specs) and `ppd tune` (choose the tree for this device)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ppdecode.commands.generate import DraftLengthOption, DraftPpdOption, DraftScheduleOption
from ppdecode.embedded import DEFAULT_MODEL
from ppdecode.proposers.draft import DraftSchedule

if TYPE_CHECKING:
    from ppdecode.tree.spec import TreeSpec  # the tree package imports torch

console = Console()
TOP_K_HELP = "Use at most the top-K ranks of each prompt token."


def family_paths(out: Path, budgets: list[int]) -> dict[int, Path]:
    """Where a family goes: ``<out>-<budget>.json`` for ``out.json``, else ``<out>/budget-<budget>.json``."""
    if out.suffix == ".json":
        return {b: out.with_name(f"{out.stem}-{b}.json") for b in budgets}
    return {b: out / f"budget-{b}.json" for b in budgets}


def write_family(family: list[TreeSpec], out: Path) -> dict[int, Path]:
    paths = family_paths(out, [int(spec.meta["budget"]) for spec in family])
    for spec in family:
        spec.save(paths[int(spec.meta["budget"])])
    return paths


def build_tree_command(
    accuracy: Annotated[Path, typer.Option(help="Accuracy JSON measured for the prompt tokens.")],
    budget: Annotated[
        str, typer.Option(help="Inputs per step: 16, a list 8,12,16 or an inclusive range 8:32:4.")
    ],
    out: Annotated[
        Path,
        typer.Option(help="Tree JSON; for several budgets OUT.json → OUT-<budget>.json, else a directory."),
    ],
    top_k: Annotated[int | None, typer.Option(help=TOP_K_HELP)] = None,
    num_prompt_tokens: Annotated[
        int | None, typer.Option(help="Refuse an accuracy file measured for another number of prompt tokens.")
    ] = None,
) -> None:
    """Build the tree(s) that maximise expected τ within an input budget (METHOD §4)."""
    from ppdecode.tree.builder import Accuracy, build_tree_family
    from ppdecode.tune.choice import parse_budgets

    acc = Accuracy.load(accuracy)
    if num_prompt_tokens is not None:
        acc.expected_for(num_prompt_tokens)
    budgets = parse_budgets(budget, acc.num_prompt_tokens)
    family = build_tree_family(acc, budgets, top_k=top_k)
    if len(family) == 1:
        family[0].save(out)
        paths = {budgets[0]: out}
    else:
        paths = write_family(family, out)
    n = acc.num_prompt_tokens
    table = Table(title=f"trees from {accuracy} (N = {n})")
    for column in ("budget", "expected τ", "inputs at depth 0..N", "nodes at depth 1..N", "file"):
        table.add_column(column, justify="left" if column == "file" else "right", overflow="fold")
    for spec in family:
        b = int(spec.meta["budget"])
        table.add_row(
            str(b), f"{spec.meta['expected_tau']:.3f}",
            " ".join(str(spec.input_size(d)) for d in range(n + 1)),
            " ".join(str(len(spec.tree(d))) for d in range(1, n + 1)), str(paths[b]),
        )
    console.print(table)


def tune_command(
    model: Annotated[str, typer.Option(help="Embedded model name, HF model directory or .gguf file.")] = (
        DEFAULT_MODEL
    ),
    prompt_tokens: Annotated[str, typer.Option(help="Prompt-token artifact directory, or 'default'.")] = (
        "default"
    ),
    accuracy: Annotated[
        Path | None,
        typer.Option(help="Accuracy JSON of the prompt tokens (default: their recorded or shipped one)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Seconds: few sizes, few repeats, interpolated.")
    ] = False,
    confirm: Annotated[
        int, typer.Option(help="Decode held-out prompts with the best N budgets and vanilla (0 = skip).")
    ] = 0,
    budgets: Annotated[
        str | None, typer.Option(help="Budgets to try, e.g. 5:48 or 5:16,20:48:4 (default: by device).")
    ] = None,
    prompts: Annotated[int, typer.Option(help="Held-out prompts for --confirm.")] = 6,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per prompt for --confirm.")] = 128,
    confirm_repeats: Annotated[
        int, typer.Option(help="Runs of each --confirm generation; the fastest counts (for busy machines).")
    ] = 1,
    lookup: Annotated[
        bool,
        typer.Option(
            "--lookup/--no-lookup",
            help="Confirm with prompt lookup joined to the prompt tokens (what `ppd generate` runs), or "
            "with the prompt tokens alone.",
        ),
    ] = True,
    draft: Annotated[
        str | None,
        typer.Option(
            help="Confirm with this draft model in the mix (as `ppd generate --draft`; needs --confirm); "
            "the profile is for that draft."
        ),
    ] = None,
    draft_ppd: DraftPpdOption = False,
    draft_length: DraftLengthOption = 4,
    draft_schedule: DraftScheduleOption = DraftSchedule.ADAPTIVE,
    repeats: Annotated[int | None, typer.Option(help="Timed forwards per size (median).")] = None,
    cache_length: Annotated[int, typer.Option(help="Committed tokens under the profiled forwards.")] = 256,
    top_k: Annotated[int | None, typer.Option(help=TOP_K_HELP)] = None,
    batch_sizes: Annotated[
        str,
        typer.Option(help="Active rows to choose a tree for, e.g. 1,2,4,8,16 (forwards of B x n inputs)."),
    ] = "1,2,4,8",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")] = "auto",
    plots: Annotated[
        Path | None,
        typer.Option(help="Folder for the PNG plots (default: next to the profile; needs matplotlib)."),
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option(help="Also write the chosen tree to this JSON, and the family to <stem>-family/."),
    ] = None,
) -> None:
    """Profile this device, choose the fastest tree budget, and store it as this setup's profile."""
    from ppdecode import draft_proposers
    from ppdecode.kernels import pack_linears
    from ppdecode.models import load_model
    from ppdecode.plotting import MISSING
    from ppdecode.prompt_tokens import PromptTokens, default_prompt_tokens
    from ppdecode.tree.builder import build_tree_family
    from ppdecode.tune.choice import parse_budgets
    from ppdecode.tune.plots import write_plots
    from ppdecode.tune.store import profile_path, save_profile
    from ppdecode.tune.tuner import TuneConfig, accuracy_for, tune

    logging.getLogger("ppdecode").setLevel(logging.WARNING)
    base = load_model(model, device=device, dtype=dtype)
    pack_linears(base)  # tuned with the kernels `ppd generate` decodes with
    if prompt_tokens == "default":
        tokens = default_prompt_tokens(base)
    else:
        tokens = PromptTokens.load(prompt_tokens, base)
    table = accuracy_for(base, tokens, accuracy)
    if table is None:
        raise ValueError(
            "no accuracy table is known for these prompt tokens: give the one measured for them with "
            "--accuracy FILE"
        )
    n = tokens.num_prompt_tokens
    settings: dict[str, object] = {
        "budgets": tuple(parse_budgets(budgets, n)) if budgets else (),
        "confirm": confirm, "prompts": prompts, "max_new_tokens": max_new_tokens,
        "confirm_repeats": confirm_repeats, "lookup": lookup,
        "cache_length": cache_length, "top_k": top_k, "batch_sizes": _batch_sizes(batch_sizes),
    }
    if repeats is not None:
        settings["repeats"] = repeats
    config = TuneConfig.quick_preset(**settings) if quick else TuneConfig(**settings)  # type: ignore[arg-type]
    drafts = None
    if draft is not None:
        drafts = draft_proposers(base, draft, draft_ppd, draft_length, schedule=draft_schedule.value)
    profile = tune(
        base, tokens, table, config, log=lambda line: console.print(f"[dim]{line}[/dim]"), draft=drafts
    )
    saved = save_profile(profile)

    result = Table(title=f"{profile.key.model} on {profile.key.device_name} ({profile.key.dtype}, "
                         f"{profile.key.threads} threads)")
    for column in ("budget", "expected τ", "pred ms/step", "pred speed-up",
                   "measured τ", "ms/step", "tokens/s", "speed-up"):
        result.add_column(column, justify="right")
    if profile.vanilla is not None:
        v = profile.vanilla
        result.add_row("vanilla", "1.000", f"{profile.latency.step_ms(1):.1f}", "1.00x", f"{v.tau:.3f}",
                       f"{v.ms_per_step:.1f}", f"{v.tokens_per_s:.1f}", "1.00x")
    for row in profile.rows:
        p, m = row.prediction, row.measured
        speedup = profile.measured_speedup(row.budget)
        mark = " *" if row.budget == profile.chosen_budget else ""
        result.add_row(
            f"{row.budget}{mark}", f"{p.expected_tau:.3f}", f"{p.step_ms:.1f}", f"{p.speedup:.2f}x",
            "" if m is None else f"{m.tau:.3f}", "" if m is None else f"{m.ms_per_step:.1f}",
            "" if m is None else f"{m.tokens_per_s:.1f}", "" if speedup is None else f"{speedup:.2f}x",
        )
    console.print(result)
    console.print(f"chosen budget: {profile.chosen_budget} (predicted best: {profile.predicted_budget}); "
                  f"profile: {saved}")
    if not profile.tree_pays:
        console.print(f"[bold]no tree pays for one row on {profile.key.device_name} ({profile.key.isa}, "
                      f"{profile.key.dtype}): engines decode without guesses here[/bold]")
    if profile.batch:
        batch = Table(title="tree per batch size (forwards of B rows x n inputs)")
        for column in ("active rows", "budget", "pred speed-up over vanilla", "vanilla ms/step"):
            batch.add_column(column, justify="right")
        for choice in profile.batch:
            batch.add_row(
                str(choice.batch), str(choice.budget) if choice.tree is not None else "vanilla",
                f"{choice.speedup:.2f}x", f"{choice.latency.step_ms(1):.1f}",
            )
        console.print(batch)
    plot_dir = plots if plots is not None else profile_path(profile.key).with_suffix("")
    plotted = write_plots(profile, plot_dir)
    for path in plotted:
        console.print(f"plot: {path}")
    if not plotted:
        console.print(f"plots skipped: {MISSING}")
    if export is not None:
        profile.exported_tree().save(export)
        family = build_tree_family(table, [row.budget for row in profile.rows], top_k=top_k)
        folder = export.with_name(f"{export.stem}-family")
        write_family(family, folder)
        console.print(f"exported the chosen tree to {export} and {len(family)} trees to {folder}/")


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(part) for part in text.split(",") if part.strip()} | {1}))
    except ValueError:
        message = f"--batch-sizes takes numbers separated by commas, e.g. 1,2,4,8; not {text!r}"
        raise ValueError(message) from None
    if sizes[0] < 1:
        raise ValueError(f"--batch-sizes must be >= 1, got {text!r}")
    return sizes


def register(app: typer.Typer) -> None:
    app.command("build-tree")(build_tree_command)
    app.command("tune")(tune_command)
