"""Benchmark reports: the JSON summary and the rich tables printed from it.

The summary is self-contained: the config, the environment, what each method adds, the per-group
metrics ({category | "overall": {method: MethodSummary}}), and the memory section. Tables are
rendered from the summary alone, so ``ppd bench --show summary.json`` can print an old run again;
``pooled_summary`` re-summarises the records of several runs (say the built-in set and HumanEval)
as one, optionally restricted to some categories. A batch run (``ppd bench --batch``) has its own
summary (``mode: "batch"``) and tables: throughput per batch size and memory per batch size.
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
from rich.text import Text

from ppdecode.bench.batch import RATIOS, REFERENCE, BatchSummary, ppd_not_faster, ppd_stops_paying
from ppdecode.bench.metrics import OVERALL, MethodSummary, Record, group_order, summarise
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


def _machine(env: dict[str, Any]) -> str:
    load = [env.get("load_average_at_start"), env.get("load_average_at_end")]
    load_text = "→".join(f"{x[0]:.1f}" for x in load if x) or "—"
    return f"threads {env['threads']}, load average {load_text}, git {str(env.get('git'))[:12]}"


def group_table(summary: dict[str, Any], group: str) -> Table:
    rows = summary["groups"][group]
    env = summary["environment"]
    title = f"{group} — {env['model']}, {env['device']} {env['dtype']}, baseline {summary['baseline']}"
    table = Table(title=title, title_justify="left")
    if group == OVERALL:
        table.caption = _machine(env)
        table.caption_justify = "left"
    # Overall, a PPD tree built from an accuracy table also shows the τ its builder expected.
    expected = {m: _expected_tau(summary, m) for m in rows} if group == OVERALL else {}
    show_expected = any(v is not None for v in expected.values())
    # Methods with a draft model also show its forwards per target step (what drafting cost).
    show_draft = any(s.get("draft_steps_per_step") is not None for s in rows.values())
    columns = ["method", "q", "tokens", "tok/s mean", "tok/s total", "speed-up mean", "speed-up total", "τ"]
    columns += ["τ expected"] * show_expected + ["steps"] + ["draft fwd/step"] * show_draft
    columns += ["= ref", "1st diff"]
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
        cells += [str(s["steps"])] + [_num(s.get("draft_steps_per_step"), 2)] * show_draft
        cells += [
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
    groups = group_order(summary["groups"])
    return Group(*(group_table(summary, g) for g in groups), memory_table(summary))


# ---- batch mode (ppd bench --batch) ------------------------------------------------------------------
def build_batch_summary(
    summaries: Sequence[BatchSummary],
    config: dict[str, Any],
    env: dict[str, Any],
    methods: dict[str, Any],
    memory: dict[str, Any],
) -> dict[str, Any]:
    """The summary of a batch run; ``mode: "batch"`` tells ``--show`` which tables to print."""
    records = [s.to_json() for s in summaries]
    return {
        "mode": "batch",
        "config": config,
        "environment": env,
        "methods": methods,
        "reference": REFERENCE,
        "batch_sizes": list(dict.fromkeys(s.batch_size for s in summaries)),
        "summaries": records,
        "ppd_not_faster_at": ppd_not_faster(records),
        "ppd_stops_paying_at": ppd_stops_paying(records),
        "memory": memory,
    }


def _by_size(summary: dict[str, Any]) -> dict[int, dict[str, dict[str, Any]]]:
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for s in summary["summaries"]:
        out.setdefault(int(s["batch_size"]), {})[s["method"]] = s
    return out


_SHORT = {"hf-greedy": "hf"}  # keeps the batch table narrow enough for a terminal


def _short(method: str) -> str:
    return _SHORT.get(method, method)


def batch_columns(summary: dict[str, Any]) -> list[str]:
    """Columns of the batch table for the methods a run has (``hf`` = hf-greedy)."""
    methods = list(dict.fromkeys(s["method"] for s in summary["summaries"]))
    ratios = [(a, b) for a, b in RATIOS if a in methods and b in methods]
    columns = ["B", "batches", *(f"tok/s {_short(m)}" for m in methods)]
    columns += [f"{_short(a)}/{_short(b)}" for a, b in ratios]
    if "ppd" in methods:
        columns.append("τ ppd")
    columns += [f"{_short(m)} = {REFERENCE}" for m in methods if m != REFERENCE and REFERENCE in methods]
    if ("ppd", REFERENCE) in ratios:
        columns.append("PPD pays")
    return columns


def batch_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row per batch size, cells as text, in the order of ``batch_columns``.

    tokens/s and speed-ups are medians over batches (paired by batch for the speed-ups); PPD pays at a
    batch size while its median speed-up over vanilla is above 1.
    """
    columns = batch_columns(summary)
    rows: list[list[str]] = []
    for size, by_method in _by_size(summary).items():
        first = next(iter(by_method.values()))
        cells = {"B": str(size), "batches": str(first["batches"])}
        for method, s in by_method.items():
            cells[f"tok/s {_short(method)}"] = _num(s["tokens_per_s_median"], 1)
            cells[f"{_short(method)} = {REFERENCE}"] = _rate(s["equal_rate"])
            for other, up in s["over"].items():
                cells[f"{_short(method)}/{_short(other)}"] = _num(up["median"], 2, "×")
        if "ppd" in by_method:
            cells["τ ppd"] = _num(by_method["ppd"]["tau"], 2)
            up = by_method["ppd"]["over"].get(REFERENCE, {}).get("median")
            cells["PPD pays"] = "—" if up is None or math.isnan(up) else ("yes" if up > 1 else "no")
        rows.append([cells.get(c, "—") for c in columns])
    return rows


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def batch_table(summary: dict[str, Any]) -> Table:
    env = summary["environment"]
    config = summary["config"]
    table = Table(
        title=f"batches — {env['model']}, {env['device']} {env['dtype']}, "
        f"{config['max_new_tokens']} new tokens; tokens/s = Σ new tokens / wall time of a batch, "
        "medians over batches",
        title_justify="left",
    )
    columns = batch_columns(summary)
    for name in columns:
        table.add_column(name, justify="right")
    pays = columns.index("PPD pays") if "PPD pays" in columns else None
    for cells in batch_rows(summary):
        # where PPD stops paying shows at a glance: its speed-up over vanilla in green or red
        style = {"yes": "bold green", "no": "bold red"}.get(cells[pays], "") if pays is not None else ""
        table.add_row(
            *(
                Text(c, style=style) if n in ("ppd/vanilla", "PPD pays") else c
                for n, c in zip(columns, cells, strict=True)
            )
        )
    verdict = _verdict(summary) + "; " if pays is not None else ""
    table.caption = verdict + _machine(env)
    table.caption_justify = "left"
    return table


def _verdict(summary: dict[str, Any]) -> str:
    slow, stop = summary.get("ppd_not_faster_at") or [], summary.get("ppd_stops_paying_at")
    if not slow:
        return "PPD faster than vanilla at every B run"
    if stop is not None:
        return f"PPD no faster than vanilla from B = {stop} on"
    return f"PPD no faster than vanilla at B = {', '.join(map(str, slow))}"


def _cache_bytes(report: dict[str, Any] | None) -> int | None:
    if not report:
        return None
    for key in ("bytes", "cache_bytes", "nbytes", "total_bytes"):
        if isinstance(report.get(key), int):
            return int(report[key])
    return None


def batch_memory_table(summary: dict[str, Any]) -> Table:
    memory = summary["memory"]
    weights = memory.get("model_weight_bytes") or summary["environment"]["model_weight_bytes"]
    table = Table(
        title=f"batch memory — model weights {_bytes(weights)}, probe: {memory.get('method', '—')}",
        title_justify="left",
    )
    methods = [m for m in ("vanilla", "ppd") if m in summary["methods"]]
    columns = ["B", *(f"cache {m}" for m in methods), *(f"probe peak {m}" for m in methods)]
    columns += ["step Δ ppd − vanilla", "PPD overhead", "% of weights", *(f"peak RSS {m}" for m in methods)]
    for name in columns:
        table.add_column(name, justify="right")
    probes = memory.get("by_batch_size", {})
    for size, by_method in _by_size(summary).items():
        probe = probes.get(str(size), {})
        peaks = probe.get("peak_tensor_bytes", {})
        table.add_row(
            str(size),
            *(_bytes(_cache_bytes(by_method.get(m, {}).get("cache"))) for m in methods),
            *(_bytes(peaks.get(m)) for m in methods),
            _bytes(probe.get("step_peak_delta_bytes")),
            _bytes(probe.get("overhead_bytes")),
            _num(probe.get("overhead_percent_of_weights"), 3, "%"),
            *(_bytes(by_method.get(m, {}).get("peak_rss_bytes")) for m in methods),
        )
    return table


def batch_tables(summary: dict[str, Any]) -> Group:
    return Group(batch_table(summary), batch_memory_table(summary))
