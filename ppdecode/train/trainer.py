"""Train prompt tokens by self-distillation (METHOD §2, steps 4–6).

Only the prompt parameters train (embeddings [N, V, H], and per-layer deltas [N, layers, H] if deep);
they stay float32 while the frozen base model runs in bfloat16 or float32. AdamW, cosine schedule
without warm-up, no weight decay. Checkpoints (tokens, optimizer, scheduler, step, RNG) are written
atomically every ``checkpoint_every`` steps to ``<output>.ckpt``; ``resume`` continues from the last
one. The artifact is written once, at the end, by ``PromptTokens.save`` (atomic: a crash never leaves
a partial artifact in place of a good one).

Multi-device: the loop runs under ``accelerate``. Every process draws the whole batch (samples and
cuts are a pure function of seed, step and sample, never of the process) and runs its share of the
rows; each weights its loss by its share of the batch's cuts, so the gradients of the (tiny) prompt
parameters, summed across processes before each step, and the loss reported are those of one process
running the whole batch, up to float32 rounding. The base model is never wrapped, since it does not
train. One CPU process is the ordinary case.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ppdecode.models import DEFAULT_MODEL, LoadedModel, load_model
from ppdecode.prompt_tokens import DEFAULT_INIT_WORDS, PromptTokens, PromptTokensConfig
from ppdecode.train.data import TRAIN, Dataset, Sample, load_dataset
from ppdecode.train.losses import (
    ALPHA,
    cross_entropy_loss,
    distillation_loss,
    make_batch,
    rank_counts,
    targets,
    teacher_student_logits,
)

logger = logging.getLogger(__name__)


class LossKind(str, enum.Enum):
    KL = "kl"  # distillation: KL(Q_k ‖ P_k) against the base model's own distribution
    CE = "ce"  # cross-entropy on the base model's greedy token y_{t+k+1}


@dataclass
class TrainConfig:
    """One training run; validated where it is made."""

    dataset: str
    output: str
    model: str = DEFAULT_MODEL
    num_prompt_tokens: int = 3
    ensemble: int = 1
    deep: bool = True
    init_words: tuple[str, ...] = DEFAULT_INIT_WORDS
    loss: LossKind = LossKind.KL
    alpha: float = ALPHA
    lr: float = 1e-2
    steps: int | None = None  # None: derived from epochs
    epochs: float = 1.0
    batch_size: int = 16  # sequences per step (all processes together)
    cuts_per_sample: int = 16  # at most this many of a sequence's stored cuts per step
    max_length: int = 512  # sequences are cut to this many tokens (cuts beyond are dropped)
    dtype: str = "bfloat16"
    device: str | None = None
    seed: int = 0
    forward_mode: str = "split"
    checkpoint_every: int = 50
    resume: bool = False
    log_every: int = 10

    def __post_init__(self) -> None:
        self.loss = LossKind(self.loss)
        self.init_words = tuple(self.init_words)
        if self.lr <= 0 or self.batch_size < 1 or self.cuts_per_sample < 1:
            raise ValueError("lr must be > 0, batch_size and cuts_per_sample >= 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.forward_mode not in ("split", "single"):
            raise ValueError("forward_mode must be 'split' or 'single'")
        if self.dtype not in ("bfloat16", "float32", "float16", "auto"):
            raise ValueError(f"unknown dtype {self.dtype!r}: use bfloat16 or float32")

    @property
    def checkpoint_dir(self) -> Path:
        output = Path(self.output)
        return output.with_name(output.name + ".ckpt")


@dataclass
class TrainResult:
    tokens: PromptTokens
    steps: int
    losses: list[float] = field(default_factory=list)  # one per step of this run (resumed steps excluded)
    seconds: float = 0.0


def _trim(
    sample: Sample, max_length: int, n: int, cuts: int, rng: random.Random
) -> tuple[list[int], list[int], list[int]]:
    room = max_length - len(sample.prompt_ids)
    response = sample.response_ids[: max(room, 0)]
    usable = [t for t in sample.cuts if t + n < len(response)]
    if len(usable) > cuts:
        usable = sorted(rng.sample(usable, cuts))
    return sample.prompt_ids, response, usable


def _order(num: int, seed: int, epoch: int) -> list[int]:
    """The sample order of an epoch: a pure function of (seed, epoch), so a resumed run sees the same data."""
    order = list(range(num))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def batch_indices(num: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Sample indices of global step ``step`` (0-based); epochs wrap around."""
    per_epoch = max(1, num // batch_size)
    epoch, index = divmod(step, per_epoch)
    order = _order(num, seed, epoch)
    return order[index * batch_size : (index + 1) * batch_size]


def batch_rows(
    samples: list[Sample], config: TrainConfig, step: int
) -> list[tuple[list[int], list[int], list[int]]]:
    """The rows of global step ``step`` with their cuts; rows left without a usable cut are dropped.

    A pure function of (seed, step, sample), never of the process: every process draws the same batch.
    """
    rows = []
    for i in batch_indices(len(samples), config.batch_size, step, config.seed):
        rng = random.Random(f"{config.seed}/{step}/{i}")
        rows.append(
            _trim(samples[i], config.max_length, config.num_prompt_tokens, config.cuts_per_sample, rng)
        )
    return [row for row in rows if row[2]]


def total_steps(config: TrainConfig, num_samples: int) -> int:
    if config.steps is not None:
        return config.steps
    return max(1, math.ceil(config.epochs * num_samples / config.batch_size))


def _cosine(total: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def trainable_share(tokens: PromptTokens, base: LoadedModel) -> tuple[int, float]:
    """Number of trainable parameters and their share of the base model's parameters."""
    count = tokens.num_parameters()
    return count, count / sum(p.numel() for p in base.model.parameters())


def train(
    config: TrainConfig,
    base: LoadedModel | None = None,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train prompt tokens on ``config.dataset``'s train split and save them to ``config.output``.

    ``on_step(step, loss)`` is called after every optimiser step (1-based step).
    """
    from accelerate import Accelerator
    from tqdm import tqdm

    use_cpu = config.device == "cpu" or (config.device in (None, "auto") and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=use_cpu)
    # Several CPU processes get the device "cpu:<rank>", which is just the CPU.
    device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)
    base = base or load_model(config.model, device=device, dtype=config.dtype)
    dataset: Dataset = load_dataset(config.dataset, base, config.num_prompt_tokens)
    samples = dataset.split(TRAIN)
    if not samples:
        raise ValueError(f"dataset {config.dataset} has no training samples")
    n = config.num_prompt_tokens
    token_config = PromptTokensConfig(
        num_prompt_tokens=n, ensemble=config.ensemble, deep=config.deep, init_words=config.init_words
    )
    tokens = PromptTokens.initial(base, token_config, seed=config.seed)
    tokens.float()  # trainable parameters stay float32 whatever the base model's dtype
    optimizer = torch.optim.AdamW(tokens.parameters(), lr=config.lr, weight_decay=0.0)
    total = total_steps(config, len(samples))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(total))
    count, trainable = trainable_share(tokens, base)
    logger.info("trainable parameters: %d (%.4f%% of %s)", count, 100 * trainable, base.name)

    step, history = 0, []
    checkpoint = config.checkpoint_dir / "state.pt"
    settings = {
        k: v for k, v in asdict(config).items() if k not in ("resume", "output", "device", "log_every")
    }
    settings["loss"] = config.loss.value
    if config.resume and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state["settings"] != settings:
            changed = sorted(k for k in settings if settings[k] != state["settings"].get(k))
            raise ValueError(
                f"checkpoint {checkpoint} was made with other settings ({', '.join(changed)}); "
                "rerun with the same flags, or without --resume to start over"
            )
        tokens.load_state_dict(state["tokens"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, history = state["step"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        logger.info("resuming from %s at step %d", checkpoint, step)
    elif config.resume:
        logger.warning("--resume: no checkpoint at %s, starting from step 0", checkpoint)

    world, rank = accelerator.num_processes, accelerator.process_index
    if world == 1 and os.environ.get("MASTER_ADDR") and "ACCELERATE_USE_CPU" in os.environ:
        # accelerate's one-process launcher sets MASTER_ADDR only when asked for several processes.
        logger.warning(
            "training in one process: `accelerate launch --num_processes N` without --multi_gpu starts "
            "one (with --cpu, several only through mpirun); on CPUs use `accelerate launch --multi_gpu "
            "--num_processes N ... --device cpu` (docs/training.md)"
        )
    logger.info("training in %d process(es)", world)
    pad = base.tokenizer.pad_token_id or 0
    losses: list[float] = []
    start = time.perf_counter()
    correct = torch.zeros(n)
    seen = 0
    bar = tqdm(
        total=total,
        initial=step,
        desc="training",
        unit="step",
        dynamic_ncols=True,
        disable=not progress or not accelerator.is_main_process,
    )
    while step < total:
        every = batch_rows(samples, config, step)
        rows = every[rank::world]
        # The loss is a mean over the batch's cuts: this process's mean weighs by its share of them.
        share = sum(len(row[2]) for row in rows) / max(1, sum(len(row[2]) for row in every))
        loss = torch.zeros((), device=base.device)
        if rows:
            batch = make_batch(rows, n, pad)
            student, teacher = teacher_student_logits(base, tokens, batch, config.forward_mode)
            if config.loss is LossKind.KL:
                loss = distillation_loss(student, teacher, batch.valid, config.alpha)
            else:
                loss = cross_entropy_loss(student, targets(batch, n), batch.valid, config.alpha)
            loss = loss * share
            loss.backward()
            with torch.no_grad():
                counts = rank_counts(student.detach(), teacher.argmax(-1), batch.valid, top_k=1)
                correct += counts[:, 0].float()
                seen += int(batch.valid.sum())
        for parameter in tokens.parameters():
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            if world > 1:
                parameter.grad = accelerator.reduce(parameter.grad, reduction="sum")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        value = float(accelerator.reduce(loss.detach(), reduction="sum"))  # the whole batch's mean
        losses.append(value)
        history.append(value)
        bar.update()
        if step % config.log_every == 0 or step == total:
            recent = losses[-config.log_every :]
            if world > 1:  # the bar shows the whole batch's top-1, not the main process's share
                counts = torch.cat([correct, torch.tensor([float(seen)])]).to(accelerator.device)
                counts = accelerator.reduce(counts, reduction="sum").cpu()
                correct, seen = counts[:-1], int(counts[-1])
            top1 = (correct / max(seen, 1)).tolist()
            bar.set_postfix(
                loss=f"{sum(recent) / len(recent):.3f}",
                top1="/".join(f"{a:.2f}" for a in top1),
                lr=f"{scheduler.get_last_lr()[0]:.1e}",
            )
            correct.zero_()
            seen = 0
        if accelerator.is_main_process and (step % config.checkpoint_every == 0 or step == total):
            _atomic_torch_save(
                {
                    "settings": settings,
                    "step": step,
                    "history": history,
                    "tokens": tokens.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate(),
                },
                checkpoint,
            )
        if on_step is not None:
            on_step(step, value)
    bar.close()
    seconds = time.perf_counter() - start

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    window = max(1, len(history) // 20)  # first / last 5 %, and a 20-point curve
    tokens.config.trained = True
    tokens.config.record = {
        "dataset": {
            k: dataset.header.get(k)
            for k in (
                "base_model",
                "writer",
                "num_prompt_tokens",
                "sources",
                "num_train",
                "num_heldout",
                "response_tokens",
                "generation",
                "created",
            )
        },
        "dataset_path": str(config.dataset),
        "settings": settings,
        "trainable_parameters": count,
        "trainable_share": trainable,
        "processes": world,
        "steps": step,
        "loss_first": mean(history[:window]),
        "loss_last": mean(history[-window:]),
        "loss_curve": [round(mean(history[i : i + window]), 4) for i in range(0, len(history), window)],
        "train_seconds_this_run": round(seconds, 1),
        "torch": torch.__version__,
    }
    if accelerator.is_main_process:
        tokens.save(config.output)
        logger.info("saved prompt tokens to %s", config.output)
    accelerator.wait_for_everyone()
    return TrainResult(tokens, step, losses, seconds)
