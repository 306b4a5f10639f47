"""`ppd generate`: stream an answer decoded with PPD (or vanilla with --no-ppd)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ppdecode.config import AcceptMode, GenerationConfig
from ppdecode.embedded import DEFAULT_MODEL
from ppdecode.proposers.draft import DraftSchedule

# the draft model's options, shared by the commands that decode with one (generate, tune, serve)
DraftOption = Annotated[
    str | None,
    typer.Option(
        help="Speculative decoding with a draft model of the same tokenizer (a model name, directory "
        "or .gguf; 'default': the default model's demonstration draft). Its tokens join the prompt "
        "tokens' tree and prompt lookup; alone with --prompt-tokens none --no-lookup."
    ),
]
DraftPpdOption = Annotated[
    bool, typer.Option("--draft-ppd", help="The draft writes its draft with PPD (its own prompt tokens).")
]
DraftLengthOption = Annotated[
    int,
    typer.Option(
        help="Draft tokens per step, written or (--draft-ppd) guessed by the draft (where the adaptive "
        "schedule starts; every step when fixed)."
    ),
]
DraftScheduleOption = Annotated[
    DraftSchedule,
    typer.Option(
        help="adaptive: a row's draft grows by two after a draft accepted whole and shrinks by one "
        "otherwise; fixed: --draft-length every step."
    ),
]


def generate(
    prompts: Annotated[
        list[str] | None,
        typer.Argument(help="The prompt(s) (user messages for chat models); several decode as one batch."),
    ] = None,
    prompts_file: Annotated[
        Path | None, typer.Option(help="A file with one prompt per line, decoded as one batch.")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Rows decoded at once (more prompts wait their turn).")] = 16,
    model: Annotated[
        str, typer.Option(help="Embedded model name, HF model directory or .gguf file.")
    ] = DEFAULT_MODEL,
    prompt_tokens: Annotated[
        str, typer.Option(help="Prompt-token artifact directory, 'default', or 'none' (no prompt tokens).")
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
    draft: DraftOption = None,
    draft_ppd: DraftPpdOption = False,
    draft_length: DraftLengthOption = 4,
    draft_schedule: DraftScheduleOption = DraftSchedule.ADAPTIVE,
    raw: Annotated[bool, typer.Option("--raw", help="Plain completion: no chat template.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of streaming.")
    ] = False,
) -> None:
    """Generate text from PROMPTS, streaming a single answer, then print a one-line summary.

    Several prompts (or --prompts-file) decode together as one batch; with --json, one JSON object is
    printed per prompt, in order.
    """
    from ppdecode import load

    texts = list(prompts or [])
    if prompts_file is not None:
        try:
            texts += [line for line in prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as err:
            raise ValueError(f"cannot read --prompts-file {prompts_file}: {err.strerror}") from None
    if not texts:
        raise ValueError("give a prompt (or several, or --prompts-file FILE with one prompt per line)")
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
        model,
        prompt_tokens=None if no_ppd or prompt_tokens == "none" else prompt_tokens,
        tree=tree,
        device=device,
        dtype=dtype,
        tune=not no_tune,
        max_batch=min(max_batch, len(texts)),
        draft=None if no_ppd else draft,
        draft_ppd=draft_ppd,
        draft_length=draft_length,
        draft_schedule=draft_schedule.value,
    )
    if len(texts) == 1 and not as_json:
        stream = engine.stream(texts[0], config)
        for chunk in stream:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        results = [stream.result]
        print()
    else:
        results = engine.generate_batch(texts, config)
    for result in results:
        stats = result.stats
        if as_json:
            payload: dict[str, Any] = {
                "text": result.text,
                "token_ids": result.token_ids,
                "finish_reason": result.finish_reason,
                "model": engine.base.name,
                "dtype": str(engine.base.dtype).removeprefix("torch."),
                "ppd": not no_ppd,
                "lookup": not no_ppd and not no_lookup,
                "draft": None if no_ppd or engine.draft is None else engine.draft.engine.base.name,
                **stats.to_dict(),
            }
            print(json.dumps(payload))
            continue
        if len(texts) > 1:
            print(result.text, end="\n\n")
        typer.secho(
            f"[{stats.new_tokens} new tokens, {stats.steps} steps, τ {stats.tau:.2f}, "
            f"{stats.tokens_per_s:.1f} tokens/s, {result.finish_reason}]",
            fg=typer.colors.BRIGHT_BLACK,
            err=True,
        )


def register(app: typer.Typer) -> None:
    app.command()(generate)
