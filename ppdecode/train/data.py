"""Self-distilled training sets (METHOD §2, steps 1–3).

The base model answers each prompt greedily (batched ``model.generate`` with left padding); each
answer gets random cut points t. A sample is (prompt ids, response ids, cuts): for a cut t the context
is prompt + response[:t] and the targets are y_{t+1..t+N+1} = response[t : t+N+1], the model's own
greedy continuation. Teacher distributions are not stored: the trainer recomputes them in the same
forward as the student (METHOD §2, efficiency hint), so a dataset is a few MB of token ids.

A dataset is one JSONL file: a header line (format, base model name and fingerprint, N, sources,
generation speed) then one line per sample. Prompts are split into train / held-out by a hash of
their text, so the held-out accuracy prompts never overlap the training prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ppdecode.models import LoadedModel
from ppdecode.train import sources

logger = logging.getLogger(__name__)

FORMAT = "ppdecode-dataset"
VERSION = 1
TRAIN, HELDOUT = "train", "heldout"


@dataclass
class DataConfig:
    """What ``build_dataset`` makes: which prompts, how long the answers, how many cuts."""

    files: tuple[str, ...] = ()
    sources: dict[str, int] = field(default_factory=dict)  # built-in source -> number of prompts
    num_prompt_tokens: int = 3
    max_new_tokens: int = 128
    max_prompt_tokens: int = 256
    cuts_per_sample: int = 16
    heldout_percent: float = 10.0
    batch_size: int = 32
    seed: int = 0
    skip_bad: bool = False
    docs_dir: str | None = None

    def __post_init__(self) -> None:
        self.files = tuple(str(f) for f in self.files)
        unknown = set(self.sources) - set(sources.BUILTIN_SOURCES)
        if unknown:
            raise ValueError(
                f"unknown prompt source(s) {', '.join(sorted(unknown))}: "
                f"choose from {', '.join(sources.BUILTIN_SOURCES)}"
            )
        if not self.files and not any(self.sources.values()):
            raise ValueError(
                "no prompts: give prompt files and/or built-in sources (e.g. --source self-instruct:200)"
            )
        if self.num_prompt_tokens < 1 or self.max_new_tokens <= self.num_prompt_tokens + 1:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) must exceed N + 1 = {self.num_prompt_tokens + 1}"
            )
        if not 0 <= self.heldout_percent < 100:
            raise ValueError(f"heldout_percent must be in [0, 100), got {self.heldout_percent}")
        if self.batch_size < 1 or self.cuts_per_sample < 1:
            raise ValueError("batch_size and cuts_per_sample must be >= 1")


@dataclass
class Sample:
    prompt: str
    source: str
    split: str  # "train" or "heldout"
    prompt_ids: list[int]  # templated prompt
    response_ids: list[int]  # the base model's greedy answer (EOS included if it stopped)
    cuts: list[int]  # cut points t: context = prompt + response[:t], with t + N < len(response)


@dataclass
class Dataset:
    header: dict[str, Any]
    samples: list[Sample]

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]


def split_of(prompt: str, heldout_percent: float) -> str:
    """A deterministic train / held-out split by a hash of the prompt text (same prompt, same split)."""
    bucket = int(hashlib.sha256(" ".join(prompt.split()).encode()).hexdigest()[:8], 16) % 10000
    return HELDOUT if bucket < heldout_percent * 100 else TRAIN


def draw_cuts(response_length: int, num_prompt_tokens: int, count: int, rng: random.Random) -> list[int]:
    """Up to ``count`` distinct random cuts t with t + N < response_length (targets stay inside)."""
    room = response_length - num_prompt_tokens
    if room <= 0:
        return []
    return sorted(rng.sample(range(room), min(count, room)))


# ---- generation --------------------------------------------------------------------------------
def encode_prompt(base: LoadedModel, text: str, max_prompt_tokens: int) -> list[int]:
    """Token ids of a user message (chat template for chat models); long messages are cut first."""
    tokenizer = base.tokenizer
    content = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(content) > max_prompt_tokens:
        text = tokenizer.decode(content[:max_prompt_tokens])
    if base.is_chat:
        templated = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(templated, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text)["input_ids"])


@torch.inference_mode()
def batched_generate(
    base: LoadedModel,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int = 32,
    sample: bool = False,
    seed: int = 0,
    desc: str = "generating",
) -> tuple[list[list[int]], dict[str, float]]:
    """Greedy (or sampled) answers to token-id prompts, batched with left padding.

    Prompts are sorted by length so a batch pads little. Each answer is cut after its first EOS.
    Returns the answers in input order and {"tokens", "seconds", "tokens_per_s"} (answer tokens only).
    """
    from tqdm import tqdm

    device = base.device
    pad = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else base.eos_token_ids[0]
    eos = set(base.eos_token_ids)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[list[int]] = [[] for _ in prompts]
    if sample:
        torch.manual_seed(seed)
    total, start = 0, time.perf_counter()
    with tqdm(total=len(prompts), desc=desc, unit="prompt", dynamic_ncols=True) as bar:
        for first in range(0, len(order), batch_size):
            chunk = order[first : first + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # [B, T], left-padded
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            options: dict[str, Any] = (
                {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "top_k": 0}
                if sample
                else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            )
            out = base.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=sorted(eos),
                **options,
            )  # [B, T + new]
            for row, i in enumerate(chunk):
                answer = out[row, width:].tolist()
                end = next((j + 1 for j, token in enumerate(answer) if token in eos), len(answer))
                answers[i] = answer[:end]
                total += end
            elapsed = time.perf_counter() - start
            bar.update(len(chunk))
            bar.set_postfix(tok_s=f"{total / elapsed:.0f}", tokens=total)
    elapsed = time.perf_counter() - start
    return answers, {"tokens": total, "seconds": elapsed, "tokens_per_s": total / elapsed if elapsed else 0.0}


def self_instruct_prompts(
    base: LoadedModel, count: int, rng: random.Random, batch_size: int
) -> tuple[list[sources.Prompt], dict[str, float]]:
    """Instructions the chat model writes itself: sampled answers to topic × task meta-prompts."""
    if not base.is_chat:
        raise ValueError(f"the self-instruct source needs a chat model; {base.name} has no chat template")
    metas = sources.self_instruct_meta_prompts(rng, int(count * 1.3) + 8)  # some replies are unusable
    encoded = [encode_prompt(base, meta, 128) for meta in metas]
    replies, speed = batched_generate(
        base, encoded, 48, batch_size, sample=True, seed=rng.randrange(2**31), desc="self-instruct"
    )
    seen: set[str] = set()
    prompts = []
    for reply in replies:
        text = sources.clean_instruction(base.tokenizer.decode(reply, skip_special_tokens=True))
        if text and text.lower() not in seen:
            seen.add(text.lower())
            prompts.append(sources.Prompt(text, "self-instruct"))
    return prompts[:count], speed


# ---- building ----------------------------------------------------------------------------------
def collect_prompts(
    base: LoadedModel, config: DataConfig, rng: random.Random
) -> tuple[list[sources.Prompt], dict]:
    """Prompts from files and built-in sources, de-duplicated; returns them and generation stats."""
    prompts: list[sources.Prompt] = []
    for path in config.files:
        prompts.extend(sources.read_prompt_file(path, skip_bad=config.skip_bad))
    stats: dict[str, Any] = {}
    for name, count in sorted(config.sources.items()):
        if count <= 0:
            continue
        if name == "python-docs":
            pool = sources.python_docs_prompts(rng, config.docs_dir)
        elif name == "python-stdlib":
            pool = sources.python_stdlib_prompts(rng)
        else:
            pool, stats["self_instruct"] = self_instruct_prompts(base, count, rng, config.batch_size)
        rng.shuffle(pool)
        if len(pool) < count:
            logger.warning("source %s gave %d prompts, fewer than the %d asked for", name, len(pool), count)
        prompts.extend(pool[:count])
    seen: set[str] = set()
    unique = []
    for prompt in prompts:
        key = " ".join(prompt.text.split())
        if key not in seen:
            seen.add(key)
            unique.append(prompt)
    return unique, stats


def build_dataset(
    base: LoadedModel,
    config: DataConfig,
    output: str | Path,
    on_progress: Callable[[str], None] | None = None,
    writer: LoadedModel | None = None,
) -> Dataset:
    """Collect prompts, let the writer (the base model unless given) answer them greedily, draw cuts,
    write ``output`` atomically.

    A writer other than the base model suits a draft's prompt tokens: inside speculative decoding
    the draft continues its target's text, so its target writes the answers, while the teacher in
    training stays the base model's own forward over them. The writer must share the base model's
    tokenizer."""
    writer = writer or base
    if writer is not base and writer.tokenizer.get_vocab() != base.tokenizer.get_vocab():
        raise ValueError(
            f"the writer {writer.name} has another tokenizer than {base.name}: its answers would be other "
            "token ids; pick a writer of the same family"
        )
    rng = random.Random(config.seed)
    prompts, stats = collect_prompts(writer, config, rng)
    if not prompts:
        raise ValueError("the prompt sources gave no prompts")
    encoded = [encode_prompt(writer, p.text, config.max_prompt_tokens) for p in prompts]
    answers, speed = batched_generate(
        writer, encoded, config.max_new_tokens, config.batch_size, desc="answering"
    )
    samples, dropped = [], 0
    for prompt, ids, answer in zip(prompts, encoded, answers, strict=True):
        cuts = draw_cuts(len(answer), config.num_prompt_tokens, config.cuts_per_sample, rng)
        if not cuts:
            dropped += 1
            continue
        split = split_of(prompt.text, config.heldout_percent)
        samples.append(Sample(prompt.text, prompt.source, split, ids, answer, cuts))
    if dropped:
        logger.info("dropped %d answers shorter than N + 1 tokens", dropped)
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.source] = counts.get(sample.source, 0) + 1
    header = {
        "format": FORMAT,
        "version": VERSION,
        "base_model": base.name,
        "fingerprint": base.fingerprint,
        "writer": writer.name,
        "num_prompt_tokens": config.num_prompt_tokens,
        "dtype": str(base.dtype).removeprefix("torch."),
        "config": asdict(config),
        "sources": counts,
        "num_samples": len(samples),
        "num_train": sum(s.split == TRAIN for s in samples),
        "num_heldout": sum(s.split == HELDOUT for s in samples),
        "response_tokens": sum(len(s.response_ids) for s in samples),
        "generation": {"answers": speed, **stats},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    dataset = Dataset(header, samples)
    write_dataset(dataset, output)
    logger.info("wrote %d samples to %s (%.0f answer tokens/s)", len(samples), output, speed["tokens_per_s"])
    return dataset


def write_dataset(dataset: Dataset, path: str | Path) -> None:
    """Write header + samples as JSONL through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(dataset.header) + "\n")
            for sample in dataset.samples:
                out.write(json.dumps(asdict(sample)) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_dataset(
    path: str | Path, base: LoadedModel | None = None, num_prompt_tokens: int | None = None
) -> Dataset:
    """Read a dataset; refuses one built for another base model or another N."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"dataset {path} does not exist; build one with `ppd data`")
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a ppdecode dataset (line 1 is no dataset header); build one with `ppd data`"
        )
    if base is not None and header.get("fingerprint") != base.fingerprint:
        raise ValueError(
            f"dataset {path} was built for base model {header.get('base_model')!r} (fingerprint "
            f"{header.get('fingerprint')}), not for {base.name!r} ({base.fingerprint}); "
            f"build one for this model with `ppd data --model {base.name}`"
        )
    if num_prompt_tokens is not None and header.get("num_prompt_tokens") != num_prompt_tokens:
        raise ValueError(
            f"dataset {path} was built for N = {header.get('num_prompt_tokens')} prompt tokens, not "
            f"{num_prompt_tokens}; rebuild it with `ppd data --num-prompt-tokens {num_prompt_tokens}` "
            "or train with "
            f"--num-prompt-tokens {header.get('num_prompt_tokens')}"
        )
    samples, bad = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            samples.append(Sample(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as err:
            bad.append(f"{path}:{number}: {err}")
    if bad:
        raise ValueError(f"{len(bad)} corrupt sample lines in {path}:\n  " + "\n  ".join(bad[:10]))
    return Dataset(header, samples)
