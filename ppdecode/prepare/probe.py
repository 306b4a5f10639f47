"""The quick throughput probe a time budget is scaled by, and the memory this device has free.

The probe times what the long stages repeat, on the loaded model and device: the prefill and decode
steps of a batch of greedy answers, single-row decode steps, and one training step of the recipe's
shape (forward, distillation loss, backward). It takes seconds on a small model.
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

DECODE_STEPS = 8  # timed decode steps after the prefill


@torch.inference_mode()
def _decode_rates(base: LoadedModel, ids: list[int], rows: int) -> tuple[float, float]:
    """(prefill seconds, seconds per decode step) of greedy decoding a batch of ``rows`` prompts.

    The model's own forward with its own cache, as ``model.generate`` runs it: one prefill, then one
    token per row and step.
    """
    inputs = torch.tensor([ids] * rows, device=base.device)  # [rows, T]
    start = time.perf_counter()
    out = base.model(input_ids=inputs, use_cache=True, logits_to_keep=1)
    _sync(base.device)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(DECODE_STEPS):
        token = out.logits[:, -1:].argmax(-1)  # [rows, 1]
        out = base.model(input_ids=token, cache=out.cache, use_cache=True)
    _sync(base.device)
    return prefill, (time.perf_counter() - start) / DECODE_STEPS


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
    # A prompt of half the longest length: most prompts are shorter than the cut (requests are short).
    ids = encode_prompt(base, " ".join(HELD_OUT_PROMPTS), recipe.max_prompt_tokens // 2)
    _decode_rates(base, ids, 1)  # the first forwards pay for allocations and lazy initialisation
    _, single = _decode_rates(base, ids, 1)
    prefill, step = _decode_rates(base, ids, recipe.data_batch_size)
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
