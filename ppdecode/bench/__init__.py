"""Benchmarks: PPD against vanilla decoding and the drafting methods people use today (docs/benchmarks.md)."""

from ppdecode.bench.metrics import MethodSummary, Record, Speedup, first_difference, speedup, summarise
from ppdecode.bench.prompts import BenchPrompt, load_prompt_set, read_humaneval, read_question_file, select
from ppdecode.bench.runner import BenchConfig, BenchResult, run_bench

__all__ = [
    "BenchConfig",
    "BenchPrompt",
    "BenchResult",
    "MethodSummary",
    "Record",
    "Speedup",
    "first_difference",
    "load_prompt_set",
    "read_humaneval",
    "read_question_file",
    "run_bench",
    "select",
    "speedup",
    "summarise",
]
