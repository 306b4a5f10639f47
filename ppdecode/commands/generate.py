"""`ppd generate`: stream an answer decoded with PPD (or vanilla with --no-ppd)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ppdecode.config import AcceptMode, GenerationConfig
from ppdecode.models import DEFAULT_MODEL


def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt (a user message for chat models).")],
    model: Annotated[
        str, typer.Option(help="Embedded model name, HF model directory or .gguf file.")
    ] = DEFAULT_MODEL,
    prompt_tokens: Annotated[
        str, typer.Option(help="Prompt-token artifact directory, or 'default'.")
    ] = "default",
    tree: Annotated[
        str,
        typer.Option(help="'auto' (tuned for this device), a tree spec JSON, a packaged tree or a profile."),
    ] = "auto",
    no_tune: Annotated[
        bool, typer.Option("--no-tune", help="With --tree auto, never tune on first use.")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")] = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy (lossless).")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample from the top-k tokens only (0 = off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass, in (0, 1].")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Random seed for sampling.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    accept: Annotated[AcceptMode, typer.Option(help="Verification rule.")] = AcceptMode.AUTO,
    no_ppd: Annotated[bool, typer.Option("--no-ppd", help="Decode without guesses (vanilla).")] = False,
    no_lookup: Annotated[
        bool, typer.Option("--no-lookup", help="Prompt tokens' guesses only, without prompt lookup.")
    ] = False,
    lookup_chain: Annotated[
        int,
        typer.Option(
            help="Inputs a lookup chain (copied tokens verified past the tree) may add to the largest "
            "tree step (0 = no chain)."
        ),
    ] = GenerationConfig.lookup_chain,
    raw: Annotated[bool, typer.Option("--raw", help="Plain completion: no chat template.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of streaming.")
    ] = False,
) -> None:
    """Generate text from PROMPT, streaming it, then print a one-line summary."""
    from ppdecode import load

    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=tuple(stop or ()),
        accept=accept,
        chat=not raw,
        use_ppd=not no_ppd,
        lookup=not no_lookup,
        lookup_chain=lookup_chain,
    )
    engine = load(
        model, prompt_tokens=None if no_ppd else prompt_tokens, tree=tree, device=device, dtype=dtype
    )
    for chunk in engine.stream(prompt, config):
        if not as_json:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    result = engine.last_result
    stats = result.stats
    if as_json:
        payload = {
            "text": result.text,
            "token_ids": result.token_ids,
            "finish_reason": result.finish_reason,
            "model": engine.base.name,
            "dtype": str(engine.base.dtype).removeprefix("torch."),
            "ppd": not no_ppd,
            "lookup": not no_ppd and not no_lookup,
            **stats.to_dict(),
        }
        print(json.dumps(payload))
        return
    print()
    typer.secho(
        f"[{stats.new_tokens} new tokens, {stats.steps} steps, τ {stats.tau:.2f}, "
        f"{stats.tokens_per_s:.1f} tokens/s, {result.finish_reason}]",
        fg=typer.colors.BRIGHT_BLACK,
        err=True,
    )


def register(app: typer.Typer) -> None:
    app.command()(generate)
