"""The quick throughput probe a time budget is scaled by, and the memory this device has free.

The probe times what the long stages repeat, on the loaded model and device: a batch of greedy answers
(two lengths, so that prefill and decode steps separate), a single-row decode, and one training step
of the recipe's shape (forward, distillation loss, backward). It takes seconds on a small model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ppdecode.models import LoadedModel
from ppdecode.prepare.plan import Recipe, Throughput
from ppdecode.prompt_tokens import PromptTokens, PromptTokensConfig
from ppdecode.train.data import encode_prompt
from ppdecode.train.losses import distillation_loss, make_batch, teacher_student_logits
from ppdecode.tune.decode import HELD_OUT_PROMPTS

logger = logging.getLogger(__name__)

SHORT, LONG = 2, 10  # answer lengths of the two timed generations


def _timed_generate(base: LoadedModel, ids: list[int], rows: int, new_tokens: int) -> float:
    """Seconds to answer ``rows`` copies of ``ids`` with exactly ``new_tokens`` greedy tokens."""
    inputs = torch.tensor([ids] * rows, device=base.device)  # [rows, T]
    pad = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else base.eos_token_ids[0]
    start = time.perf_counter()
    with torch.inference_mode():
        base.model.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            min_new_tokens=new_tokens,
            max_new_tokens=new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad,
        )
    _sync(base.device)
    return time.perf_counter() - start


def _decode_rates(base: LoadedModel, ids: list[int], rows: int) -> tuple[float, float]:
    """(prefill seconds, seconds per decode step) of a batch of ``rows`` prompts."""
    short = _timed_generate(base, ids, rows, SHORT)
    long = _timed_generate(base, ids, rows, LONG)
    step = max(long - short, 1e-6) / (LONG - SHORT)
    return max(short - SHORT * step, 0.0), step


def _train_step_s(base: LoadedModel, recipe: Recipe, prompt_ids: list[int], deep: bool) -> float:
    """Seconds of one training step of the recipe's shape (the second of two, the first warms up)."""
    n = recipe.num_prompt_tokens
    tokens = PromptTokens.initial(base, PromptTokensConfig(num_prompt_tokens=n, deep=deep)).float()
    generator = torch.Generator().manual_seed(0)
    vocab = int(base.model.get_input_embeddings().num_embeddings)
    response = torch.randint(vocab, (recipe.max_new_tokens,), generator=generator).tolist()
    room = len(response) - n
    cuts = sorted({round(i * (room - 1) / max(recipe.cuts - 1, 1)) for i in range(min(recipe.cuts, room))})
    batch = make_batch([(prompt_ids, response, cuts)] * recipe.train_batch_size, n, 0)
    seconds = 0.0
    for _ in range(2):
        start = time.perf_counter()
        student, teacher = teacher_student_logits(base, tokens, batch)
        distillation_loss(student, teacher, batch.valid).backward()
        _sync(base.device)
        seconds = time.perf_counter() - start
    return seconds


def probe_throughput(base: LoadedModel, recipe: Recipe, deep: bool = True) -> Throughput:
    """Measure the rates of ``Throughput`` on ``base`` (seconds; a few forwards of each kind)."""
    ids = encode_prompt(base, " ".join(HELD_OUT_PROMPTS[:4]), recipe.max_prompt_tokens)
    _timed_generate(base, ids, 1, 1)  # the first call pays for allocations and lazy initialisation
    prefill, step = _decode_rates(base, ids, recipe.data_batch_size)
    _, single = _decode_rates(base, ids, 1)
    train_step = _train_step_s(base, recipe, ids, deep)
    throughput = Throughput(recipe.data_batch_size, prefill, step, single, train_step)
    logger.info(
        "probe: %.0f answer tokens/s at batch %d (prefill %.2f s), %.1f ms per single-row step, "
        "%.2f s per training step", recipe.data_batch_size / step, recipe.data_batch_size, prefill,
        1000 * single, train_step,
    )
    return throughput


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new allocations on ``device`` (None where it cannot be told)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)
