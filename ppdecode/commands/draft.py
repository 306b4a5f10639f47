"""``ppd make-draft``: train a demonstration draft model cut from its target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def make_draft(
    name: Annotated[str, typer.Option(help="The draft to make (smollm2-135m-draft).")] = "smollm2-135m-draft",
    minutes: Annotated[float, typer.Option(help="Training time.")] = 7.0,
    out: Annotated[
        Path | None, typer.Option(help="Where to write it (default: the packaged file, replaced atomically).")
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            help="A self-distillation dataset of the target (`ppd data --model TARGET`): the exit learns "
            "the target on its own answers too. Always: Python docs and standard-library code."
        ),
    ] = None,
    rank: Annotated[
        int | None,
        typer.Option(
            help="Rank of the trained updates of the draft's layers (0: train the exit alone and share "
            "the target's layers). Default: the draft's own."
        ),
    ] = None,
) -> None:
    """Cut the draft from its target (its first layers), train it by self-distillation (its exit, and
    low-rank updates of its layers), and store it with its held-out agreement with the target."""
    from ppdecode.draft_model import DRAFTS
    from ppdecode.draft_model import make_draft as run

    if name not in DRAFTS:
        raise ValueError(f"unknown draft {name!r}: choose from {', '.join(DRAFTS)}")
    if minutes <= 0:
        raise ValueError(f"--minutes must be positive, got {minutes}")
    record = run(name, 60 * minutes, out, dataset, rank)
    typer.echo(json.dumps(record))


def register(app: typer.Typer) -> None:
    app.command("make-draft")(make_draft)
