"""Held-out accuracy of prompt tokens (METHOD §2, last paragraph), the input of the tree builder (§4).

Along the base model's greedy answer to each held-out prompt, at every position t, prompt token k
(k = 1..N) is scored on the model's greedy token at distance k+1: ``rank_probs[k-1][r]`` is how often
that token is exactly rank r of the prompt token's logits, and ``topk_accuracy[k-1][r-1]`` how often
it is within the top r. The greedy tokens are the teacher's argmax in the same forward as the prompt
tokens (losses.teacher_student_logits), so they are exactly what greedy decoding would produce.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ppdecode.models import LoadedModel
from ppdecode.plotting import pyplot
from ppdecode.prompt_tokens import PromptTokens, PromptTokensConfig
from ppdecode.train.data import HELDOUT, Sample
from ppdecode.train.losses import make_batch, rank_counts, teacher_student_logits
from ppdecode.tree.spec import write_json_atomic

logger = logging.getLogger(__name__)

TOP_K = 10


@torch.no_grad()
def measure(
    base: LoadedModel,
    tokens: PromptTokens,
    samples: list[Sample],
    top_k: int = TOP_K,
    batch_size: int = 4,
    cuts_per_forward: int = 128,
    max_length: int = 512,
    desc: str = "accuracy",
) -> dict[str, Any]:
    """Rank statistics of ``tokens`` at every position of the samples' greedy answers."""
    from tqdm import tqdm

    n = tokens.num_prompt_tokens
    pad = base.tokenizer.pad_token_id or 0
    counts = torch.zeros(n, top_k, dtype=torch.long)
    positions = 0
    rows: list[tuple[list[int], list[int], list[int]]] = []
    for sample in samples:
        response = sample.response_ids[: max(0, max_length - len(sample.prompt_ids))]
        every = list(range(max(0, len(response) - n)))
        rows.extend(
            (sample.prompt_ids, response, every[i : i + cuts_per_forward])
            for i in range(0, len(every), cuts_per_forward)
        )
    rows.sort(key=lambda row: len(row[0]) + len(row[1]))  # similar lengths pad little
    for first in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", dynamic_ncols=True):
        batch = make_batch(rows[first : first + batch_size], n, pad)
        student, teacher = teacher_student_logits(base, tokens, batch)
        counts += rank_counts(student, teacher.argmax(-1), batch.valid, top_k)
        positions += int(batch.valid.sum())
    probs = (counts.double() / max(positions, 1)).tolist()
    cumulative = counts.double().cumsum(1) / max(positions, 1)
    return {
        "num_prompt_tokens": n,
        "top_k": top_k,
        "rank_probs": [[round(p, 6) for p in row] for row in probs],
        "topk_accuracy": [[round(a, 6) for a in row] for row in cumulative.tolist()],
        "base_model": base.name,
        "fingerprint": base.fingerprint,
        "num_samples": positions,
        "num_prompts": len(samples),
    }


def accuracy_report(
    base: LoadedModel, tokens: PromptTokens, samples: list[Sample], **options: Any
) -> dict[str, Any]:
    """Accuracy of ``tokens`` and, under ``init``, of their untrained initialisation (same N, V, deep)."""
    if not samples:
        raise ValueError(
            "no held-out samples to measure accuracy on; build the dataset with --heldout-percent > 0"
        )
    held = [s for s in samples if s.split == HELDOUT]
    if len(held) != len(samples):
        raise ValueError("accuracy must be measured on held-out samples only")
    config = tokens.config
    init = PromptTokens.initial(
        base,
        PromptTokensConfig(
            num_prompt_tokens=config.num_prompt_tokens,
            ensemble=config.ensemble,
            deep=config.deep,
            init_words=config.init_words,
        ),
    )
    report = measure(base, tokens, samples, desc="accuracy (trained)", **options)
    report["init"] = measure(base, init, samples, desc="accuracy (init)", **options)
    report["dtype"] = str(base.dtype).removeprefix("torch.")
    return report


def save_report(report: dict[str, Any], path: str | Path) -> None:
    write_json_atomic(Path(path), report)


def summary_table(report: dict[str, Any]) -> str:
    """A markdown table: top-1 / top-10 per distance, trained vs init."""
    lines = [
        "| distance | top-1 trained | top-1 init | top-10 trained | top-10 init |",
        "|---|---|---|---|---|",
    ]
    for i, (trained, init) in enumerate(
        zip(report["topk_accuracy"], report["init"]["topk_accuracy"], strict=True)
    ):
        lines.append(f"| {i + 2} | {trained[0]:.3f} | {init[0]:.3f} | {trained[-1]:.3f} | {init[-1]:.3f} |")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str | Path) -> Path | None:
    """Accuracy vs r for each prompt token, trained (solid) vs untrained initialisation (dashed).

    Returns the PNG written, or None without matplotlib (a warning says the plot was skipped).
    """
    plt = pyplot("the accuracy plot")
    if plt is None:
        return None
    ranks = list(range(1, report["top_k"] + 1))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (trained, init) in enumerate(
        zip(report["topk_accuracy"], report["init"]["topk_accuracy"], strict=True)
    ):
        (line,) = ax.plot(ranks, trained, marker="o", label=f"prompt token {i + 1} (distance {i + 2})")
        ax.plot(ranks, init, linestyle="--", color=line.get_color(), alpha=0.7)
    ax.plot([], [], linestyle="--", color="grey", label="untrained initialisation")
    ax.set_xlabel("r (top-r)")
    ax.set_ylabel("held-out top-r accuracy")
    ax.set_ylim(0, 1)
    ax.set_xticks(ranks)
    ax.grid(alpha=0.3)
    ax.set_title(f"{report['base_model']}: {report['num_samples']} positions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
