"""`ppd serve`: an OpenAI-compatible HTTP server with continuous batching, metrics and a chat page."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from ppdecode.commands.generate import DraftLengthOption, DraftOption, DraftPpdOption, DraftScheduleOption
from ppdecode.embedded import DEFAULT_MODEL
from ppdecode.proposers.draft import DraftSchedule


def serve(
    model: Annotated[
        str, typer.Option(help="Embedded model name, HF model directory or .gguf file.")
    ] = DEFAULT_MODEL,
    prompt_tokens: Annotated[
        str, typer.Option(help="Prompt-token artifact directory, 'default', or 'none' (vanilla).")
    ] = "default",
    tree: Annotated[
        str,
        typer.Option(help="'auto' (tuned for this device), a tree spec JSON, a packaged tree or a profile."),
    ] = "auto",
    draft: DraftOption = None,
    draft_ppd: DraftPpdOption = False,
    draft_length: DraftLengthOption = 4,
    draft_schedule: DraftScheduleOption = DraftSchedule.ADAPTIVE,
    host: Annotated[
        str, typer.Option(help="Address to bind; other machines can connect only if this is not loopback.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Require 'Authorization: Bearer KEY' on /v1/* (also read from PPD_API_KEY).",
            envvar="PPD_API_KEY",
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Requests decoded together in one forward.")] = 8,
    max_queue: Annotated[
        int, typer.Option(help="Requests that may wait beyond the batch; more are refused with 503.")
    ] = 32,
    max_tokens: Annotated[int, typer.Option(help="Cap on a request's max_tokens.")] = 4096,
    max_prompt_tokens: Annotated[
        int | None, typer.Option(help="Cap on a request's prompt length in tokens (default: the context).")
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Cap on a request body's size.")] = 1 << 20,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")] = "auto",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve MODEL over HTTP: /v1/completions, /v1/chat/completions, /v1/models, /metrics, / (chat)."""
    # Heavy imports here, so that `ppd --help` stays fast.
    from ppdecode import load
    from ppdecode.server import ServerConfig, create_app
    from ppdecode.server.runner import serve as run

    config = ServerConfig(
        api_key=api_key or None,
        max_queue=max_queue,
        max_body_bytes=max_body_bytes,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens=max_tokens,
        default_max_tokens=min(256, max_tokens),
    )
    tokens = None if prompt_tokens.lower() == "none" else prompt_tokens
    engine = load(
        model,
        prompt_tokens=tokens,
        tree=tree,
        device=device,
        dtype=dtype,
        draft=draft,
        draft_ppd=draft_ppd,
        draft_length=draft_length,
        draft_schedule=draft_schedule.value,
        max_batch=max_batch,
    )
    logging.getLogger("ppdecode").setLevel(log_level.upper())
    if host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        logging.getLogger(__name__).warning(
            "serving on %s without --api-key: anyone who can reach it may use it", host
        )
    run(create_app(engine, config), host=host, port=port, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.command()(serve)
