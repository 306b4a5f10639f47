"""Benchmark plots (matplotlib, Agg backend, PNG): speed-up per category, τ histogram, tokens/s per method;
for a batch run, throughput and speed-ups against the batch size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ppdecode.bench.batch import RATIOS, speedup_at
from ppdecode.bench.metrics import OVERALL, Record, group_order
from ppdecode.plotting import pyplot


def save_plots(summary: dict[str, Any], records: Sequence[Record], out_dir: Path) -> dict[str, Path]:
    """Write the three plots into ``out_dir``; returns {name: path}. Without matplotlib, writes none."""
    plt = pyplot("the benchmark plots")
    if plt is None:
        return {}
    files = {
        "speedup": out_dir / "speedup_per_category.png",
        "tau": out_dir / "tau_histogram.png",
        "tokens_per_s": out_dir / "tokens_per_s.png",
    }
    for name, draw in (("speedup", _speedup), ("tau", _tau), ("tokens_per_s", _tokens_per_s)):
        fig = draw(plt, summary, records)
        fig.savefig(files[name], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return files


def _title(summary: dict[str, Any], what: str) -> str:
    env = summary["environment"]
    return f"{what} — {env['model']}, {env['device']} {env['dtype']}"


def _speedup(plt: Any, summary: dict[str, Any], records: Sequence[Record]) -> Any:
    groups = group_order(summary["groups"])
    baseline = summary["baseline"]
    methods = [m for m in summary["groups"][OVERALL] if m != baseline]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 2), 4))
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        values = [summary["groups"][g].get(method, {}).get("speedup_total", float("nan")) for g in groups]
        ax.bar([x + i * width for x in range(len(groups))], values, width, label=method)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(
        [x + width * (len(methods) - 1) / 2 for x in range(len(groups))], groups, rotation=30, ha="right"
    )
    ax.set_ylabel(f"speed-up over {baseline} (total tokens / total time)")
    ax.set_title(_title(summary, "speed-up per category"))
    ax.legend(fontsize="small")
    return fig


def _tau(plt: Any, summary: dict[str, Any], records: Sequence[Record]) -> Any:
    overall = summary["groups"][OVERALL]
    methods = [m for m, s in overall.items() if s["tau_histogram"] and (s["tau"] or 0) > 1.0] or list(overall)
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        hist = {int(k): v for k, v in overall[method]["tau_histogram"].items()}
        total = sum(hist.values()) or 1
        keys = sorted(hist)
        ax.bar(
            [k + i * width for k in keys],
            [hist[k] / total for k in keys],
            width,
            label=f"{method} (τ {overall[method]['tau'] or 0:.2f})",
        )
    ticks = sorted({int(k) for m in methods for k in overall[m]["tau_histogram"]})
    ax.set_xticks([k + width * (len(methods) - 1) / 2 for k in ticks], [str(k) for k in ticks])
    ax.set_xlabel("tokens committed per forward (τ of a step, bonus included)")
    ax.set_ylabel("share of steps")
    ax.set_title(_title(summary, "τ histogram"))
    ax.legend(fontsize="small")
    return fig


def _tokens_per_s(plt: Any, summary: dict[str, Any], records: Sequence[Record]) -> Any:
    methods = list(summary["groups"][OVERALL])
    per_method = [[r.tokens_per_s for r in records if r.method == m] for m in methods]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(methods) + 2), 4))
    ax.boxplot(per_method, showmeans=True)
    ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, ha="right")
    ax.set_ylabel("tokens/s per question")
    ax.set_title(_title(summary, "tokens/s per method"))
    return fig


def save_batch_plots(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """A batch run's plot: tokens/s per method vs B, and the speed-ups vs B. Without matplotlib, none."""
    plt = pyplot("the benchmark plots")
    if plt is None:
        return {}
    summaries = summary["summaries"]
    methods = list(dict.fromkeys(s["method"] for s in summaries))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for method in methods:
        points = sorted(
            (s["batch_size"], s["tokens_per_s_median"]) for s in summaries if s["method"] == method
        )
        left.plot([b for b, _ in points], [v for _, v in points], marker="o", label=method)
    left.set_ylabel("tokens/s of a batch (all rows), median over batches")
    for method, over in RATIOS:
        ups = sorted(speedup_at(summaries, method, over).items())
        if ups:
            right.plot([b for b, _ in ups], [v for _, v in ups], marker="o", label=f"{method} / {over}")
    right.axhline(1.0, color="black", linewidth=0.8)
    right.set_ylabel("speed-up (median over batches)")
    sizes = sorted({s["batch_size"] for s in summaries})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_xlabel("batch size B")
        ax.legend(fontsize="small")
    fig.suptitle(_title(summary, f"batches, {summary['config']['max_new_tokens']} new tokens"))
    path = out_dir / "batch_throughput.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return {"batch_throughput": path}
