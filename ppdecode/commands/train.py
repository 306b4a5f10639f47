"""`ppd data`, `ppd train`, `ppd accuracy`: build a self-distilled dataset, train prompt tokens, measure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ppdecode.embedded import DEFAULT_MODEL


def _parse_sources(values: list[str]) -> dict[str, int]:
    parsed: dict[str, int] = {}
    for value in values:
        name, _, count = value.partition(":")
        try:
            parsed[name] = int(count) if count else 200
        except ValueError:
            raise ValueError(f"--source {value!r}: write NAME or NAME:COUNT, e.g. python-docs:300") from None
    return parsed


def data(
    output: Annotated[Path, typer.Argument(help="Dataset file to write (JSONL).")],
    file: Annotated[
        list[Path] | None,
        typer.Option(
            "--file", help="Prompt file: ShareGPT/Alpaca/JSONL 'prompt' (.json/.jsonl) or text (repeatable)."
        ),
    ] = None,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            help="Built-in prompts NAME[:COUNT]: self-instruct, python-docs, python-stdlib (repeatable).",
        ),
    ] = None,
    model: Annotated[
        str, typer.Option(help="Base model (embedded name, HF directory or .gguf).")
    ] = DEFAULT_MODEL,
    writer: Annotated[
        str | None,
        typer.Option(
            help="Model that writes the answers (default: the base model). For a draft's prompt tokens, "
            "its target: inside speculative decoding the draft continues the target's text."
        ),
    ] = None,
    num_prompt_tokens: Annotated[
        int, typer.Option("--num-prompt-tokens", "-n", help="N the data is for.")
    ] = 3,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer the model writes.")] = 128,
    max_prompt_tokens: Annotated[int, typer.Option(help="Longer prompts are cut to this many tokens.")] = 256,
    cuts: Annotated[int, typer.Option(help="Random cut points per answer.")] = 16,
    heldout_percent: Annotated[
        float, typer.Option(help="Share of prompts kept for held-out accuracy.")
    ] = 10.0,
    batch_size: Annotated[
        int, typer.Option(help="Prompts answered together (batched greedy generation).")
    ] = 32,
    dtype: Annotated[str, typer.Option(help="bfloat16 (fast on CPU), float32 or auto.")] = "bfloat16",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of prompt choice and cut points.")] = 0,
    docs_dir: Annotated[
        str | None, typer.Option(help="Python docs sources (html/_sources) for python-docs.")
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip malformed prompt-file lines (else refuse).")
    ] = False,
) -> None:
    """Build a self-distillation dataset: the base model answers the prompts greedily."""
    from ppdecode.draft_model import resolve_draft
    from ppdecode.models import load_model
    from ppdecode.train.data import DataConfig, build_dataset

    config = DataConfig(
        files=tuple(str(f) for f in file or ()),
        sources=_parse_sources(source or []),
        num_prompt_tokens=num_prompt_tokens,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=max_prompt_tokens,
        cuts_per_sample=cuts,
        heldout_percent=heldout_percent,
        batch_size=batch_size,
        seed=seed,
        skip_bad=skip_bad,
        docs_dir=docs_dir,
    )
    if writer is None:
        base = author = load_model(model, device=device, dtype=dtype)
    else:
        author = load_model(writer, device=device, dtype=dtype)
        base = resolve_draft(author, model)  # shares the writer's layers when cut from it
    dataset = build_dataset(base, config, output, writer=author)
    speed = dataset.header["generation"]["answers"]
    typer.echo(
        f"{output}: {dataset.header['num_train']} train + {dataset.header['num_heldout']} held-out samples, "
        f"{dataset.header['response_tokens']} answer tokens at {speed['tokens_per_s']:.0f} tokens/s; "
        f"sources {dataset.header['sources']}"
    )


def train(
    dataset: Annotated[Path, typer.Argument(help="Dataset built by `ppd data` for this model and N.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Artifact directory to write.")],
    model: Annotated[str, typer.Option(help="Base model (must match the dataset).")] = DEFAULT_MODEL,
    num_prompt_tokens: Annotated[int, typer.Option("--num-prompt-tokens", "-n", help="N prompt tokens.")] = 3,
    ensemble: Annotated[
        int, typer.Option("--ensemble", "-v", help="V ensemble members per prompt token.")
    ] = 1,
    deep: Annotated[
        bool, typer.Option("--deep/--no-deep", help="Deep prompt tokens (per-layer vectors).")
    ] = True,
    init_word: Annotated[
        list[str] | None, typer.Option(help="Initialisation word per prompt token (repeatable).")
    ] = None,
    loss: Annotated[str, typer.Option(help="kl (distillation) or ce (cross-entropy).")] = "kl",
    lr: Annotated[float, typer.Option(help="AdamW learning rate (cosine, no warm-up).")] = 1e-2,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (default: from --epochs).")] = None,
    epochs: Annotated[
        float, typer.Option(help="Passes over the training split (if --steps is not given).")
    ] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 16,
    cuts: Annotated[int, typer.Option(help="Cut points used per sequence and step.")] = 16,
    max_length: Annotated[int, typer.Option(help="Sequences are cut to this many tokens.")] = 512,
    dtype: Annotated[
        str, typer.Option(help="Base model dtype: bfloat16 or float32 (tokens stay float32).")
    ] = "bfloat16",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of data order and cut choice.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints (<output>.ckpt).")] = 50,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
) -> None:
    """Train prompt tokens on a dataset's training split (only the prompt parameters train)."""
    from ppdecode.train.trainer import LossKind, TrainConfig
    from ppdecode.train.trainer import train as run

    if loss not in {kind.value for kind in LossKind}:
        raise ValueError(f"--loss {loss!r}: use kl (distillation) or ce (cross-entropy)")

    config = TrainConfig(
        dataset=str(dataset),
        output=str(output),
        model=model,
        num_prompt_tokens=num_prompt_tokens,
        ensemble=ensemble,
        deep=deep,
        init_words=tuple(init_word) if init_word else TrainConfig.init_words,
        loss=LossKind(loss),
        lr=lr,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        cuts_per_sample=cuts,
        max_length=max_length,
        dtype=dtype,
        device=device,
        seed=seed,
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
    result = run(config)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`, one summary, not one per process
        return
    record = result.tokens.config.record
    typer.echo(
        f"{output}: {result.steps} steps, loss {record['loss_first']:.3f} -> {record['loss_last']:.3f}, "
        f"{record['trainable_parameters']} trainable parameters "
        f"({100 * record['trainable_share']:.4f}% of the model), "
        f"{result.seconds:.0f} s"
    )


def accuracy(
    dataset: Annotated[Path, typer.Argument(help="Dataset whose held-out split is measured.")],
    prompt_tokens: Annotated[Path, typer.Option("--prompt-tokens", "-p", help="Trained artifact directory.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Accuracy JSON (input of the tree builder).")
    ],
    plot: Annotated[
        Path | None,
        typer.Option(help="PNG plot of accuracy vs r (default: next to the JSON; needs matplotlib)."),
    ] = None,
    model: Annotated[str, typer.Option(help="Base model.")] = DEFAULT_MODEL,
    dtype: Annotated[str, typer.Option(help="bfloat16 or float32.")] = "bfloat16",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    max_prompts: Annotated[
        int | None, typer.Option(help="Measure at most this many held-out prompts.")
    ] = None,
    update_record: Annotated[
        bool, typer.Option("--update-record", help="Also store the accuracy in the artifact's record.")
    ] = False,
) -> None:
    """Held-out top-1..top-10 accuracy per prompt token, trained vs untrained initialisation."""
    from ppdecode.models import load_model
    from ppdecode.plotting import MISSING
    from ppdecode.prompt_tokens import PromptTokens
    from ppdecode.train.accuracy import accuracy_report, plot_report, save_report, summary_table
    from ppdecode.train.data import HELDOUT, load_dataset

    base = load_model(model, device=device, dtype=dtype)
    tokens = PromptTokens.load(prompt_tokens, base)
    held = load_dataset(dataset, base, tokens.num_prompt_tokens).split(HELDOUT)[:max_prompts]
    report = accuracy_report(base, tokens, held)
    save_report(report, output)
    plotted = plot_report(report, plot or output.with_suffix(".png"))
    if update_record:
        tokens.config.record["accuracy"] = {
            "dataset": str(dataset),
            "num_samples": report["num_samples"],
            "dtype": report["dtype"],
            "topk_accuracy": report["topk_accuracy"],
            "init_topk_accuracy": report["init"]["topk_accuracy"],
        }
        tokens.save(prompt_tokens)
    typer.echo(summary_table(report))
    plot_note = f"and {plotted}" if plotted else f"(plot skipped: {MISSING})"
    typer.echo(f"wrote {output} {plot_note} ({report['num_samples']} positions, {len(held)} prompts)")
    typer.echo(json.dumps({"topk_accuracy": report["topk_accuracy"]}))


def register(app: typer.Typer) -> None:
    app.command()(data)
    app.command()(train)
    app.command()(accuracy)
