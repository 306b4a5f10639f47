"""Benchmark reports: the JSON summary and the rich tables printed from it.

The summary is self-contained: the config, the environment, what each method adds, the per-group
metrics ({category | "overall": {method: MethodSummary}}), and the memory section. Tables are
rendered from the summary alone, so ``ppd bench --show summary.json`` can print an old run again;
``pooled_summary`` re-summarises the records of several runs (say the built-in set and HumanEval)
as one, optionally restricted to some categories.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from ppdecode.bench.metrics import OVERALL, MethodSummary, Record, summarise
from ppdecode.bench.prompts import keep_categories


def build_summary(
    records: Sequence[Record],
    groups: dict[str, dict[str, MethodSummary]],
    config: dict[str, Any],
    env: dict[str, Any],
    methods: dict[str, Any],
    memory: dict[str, Any],
) -> dict[str, Any]:
    memory = {**memory, "peak_rss_bytes": _rss(records)}
    return {
        "config": config,
        "environment": env,
        "methods": methods,
        "baseline": config["baseline"],
        "groups": {
            group: {m: s.to_json() for m, s in by_method.items()} for group, by_method in groups.items()
        },
        "memory": memory,
    }


def pooled_summary(runs: Sequence[Path], categories: Sequence[str] = ()) -> dict[str, Any]:
    """One summary over the records of several runs (directories with records.jsonl and summary.json).

    Config, environment, methods and memory are the first run's; the groups are recomputed from the
    pooled records, kept to ``categories`` when given, against the first run's baseline.
    """
    if not runs:
        raise ValueError("give at least one benchmark run directory")
    records: list[Record] = []
    for run in runs:
        path = run / "records.jsonl"
        if not path.is_file():
            raise ValueError(f"{run}: no records.jsonl; give the output directory of a `ppd bench` run")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    records.append(Record.from_json(json.loads(line)))
                except (json.JSONDecodeError, TypeError, KeyError) as err:
                    raise ValueError(f"{path}:{number}: not a benchmark record ({err})") from None
    first = json.loads((runs[0] / "summary.json").read_text(encoding="utf-8"))
    records = keep_categories(records, categories, "these runs")
    groups = summarise(records, first["baseline"])
    return {**first, "groups": {g: {m: s.to_json() for m, s in by.items()} for g, by in groups.items()}}


def _rss(records: Sequence[Record]) -> dict[str, Any]:
    """Median peak RSS of each method's runs, and each method's paired median delta over vanilla."""
    by_method: dict[str, dict[str, int]] = {}
    for r in records:
        if r.peak_rss_bytes is not None:
            by_method.setdefault(r.method, {})[r.question_id] = r.peak_rss_bytes
    out: dict[str, Any] = {m: {"median": int(statistics.median(v.values()))} for m, v in by_method.items()}
    vanilla = by_method.get("vanilla")
    if vanilla:
        for method, peaks in by_method.items():
            deltas = [peaks[q] - vanilla[q] for q in peaks if q in vanilla]
            if method != "vanilla" and deltas:
                out[method]["median_delta_over_vanilla"] = int(statistics.median(deltas))
    return out


def _num(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}{suffix}"


def _bytes(value: float | None) -> str:
    if value is None:
        return "—"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def group_table(summary: dict[str, Any], group: str) -> Table:
    rows = summary["groups"][group]
    env = summary["environment"]
    title = f"{group} — {env['model']}, {env['device']} {env['dtype']}, baseline {summary['baseline']}"
    table = Table(title=title, title_justify="left")
    if group == OVERALL:
        load = [env.get("load_average_at_start"), env.get("load_average_at_end")]
        load_text = "→".join(f"{x[0]:.1f}" for x in load if x) or "—"
        table.caption = f"threads {env['threads']}, load average {load_text}, git {str(env.get('git'))[:12]}"
        table.caption_justify = "left"
    # Overall, a PPD tree built from an accuracy table also shows the τ its builder expected.
    expected = {m: _expected_tau(summary, m) for m in rows} if group == OVERALL else {}
    show_expected = any(v is not None for v in expected.values())
    columns = ["method", "q", "tokens", "tok/s mean", "tok/s total", "speed-up mean", "speed-up total", "τ"]
    columns += ["τ expected"] * show_expected + ["steps", "= ref", "1st diff"]
    for name in columns:
        table.add_column(name, justify="left" if name == "method" else "right")
    for method, s in rows.items():
        diffs = s["first_diffs"]
        cells = [
            method,
            str(s["questions"]),
            str(s["new_tokens"]),
            _num(s["tokens_per_s_mean"], 1),
            _num(s["tokens_per_s_total"], 1),
            _num(s["speedup_mean"], 2, "×"),
            _num(s["speedup_total"], 2, "×"),
            _num(s["tau"], 2),
        ]
        cells += [_num(expected.get(method), 2)] * show_expected
        cells += [
            str(s["steps"]),
            "—" if s["equal_rate"] is None else f"{100 * s['equal_rate']:.0f}%",
            "—" if not diffs else str(min(diffs)),
        ]
        table.add_row(*cells)
    return table


def _expected_tau(summary: dict[str, Any], method: str) -> float | None:
    tree = summary["methods"].get(method, {}).get("tree") or {}
    value = (tree.get("meta") or {}).get("expected_tau")
    return float(value) if isinstance(value, (int, float)) else None


def memory_table(summary: dict[str, Any]) -> Table:
    memory = summary["memory"]
    weights = memory.get("model_weight_bytes") or summary["environment"]["model_weight_bytes"]
    table = Table(
        title=f"memory — model weights {_bytes(weights)}, probe: {memory.get('method', '—')}",
        title_justify="left",
    )
    for name in (
        "method",
        "extra params",
        "tree buffers",
        "probe peak",
        "step Δ vs vanilla",
        "PPD overhead",
        "% of weights",
        "peak RSS (median)",
        "RSS Δ vs vanilla",
    ):
        table.add_column(name, justify="left" if name == "method" else "right")
    rss = memory.get("peak_rss_bytes", {})
    for method, info in summary["methods"].items():
        probe = memory.get("methods", {}).get(method, {})
        table.add_row(
            method,
            f"{info['extra_parameters']:,}",
            _bytes(info["extra_buffer_bytes"] or None),
            _bytes(probe.get("peak_tensor_bytes")),
            _bytes(probe.get("step_peak_delta_bytes")),
            _bytes(probe.get("overhead_bytes")),
            _num(probe.get("overhead_percent_of_weights"), 3, "%"),
            _bytes(rss.get(method, {}).get("median")),
            _bytes(rss.get(method, {}).get("median_delta_over_vanilla")),
        )
    return table


def tables(summary: dict[str, Any]) -> Group:
    """One table per category, then overall, then memory."""
    groups = [g for g in summary["groups"] if g != OVERALL] + [OVERALL]
    return Group(*(group_table(summary, g) for g in groups), memory_table(summary))
