#!/usr/bin/env bash
# The benchmark behind the numbers in docs/benchmarks.md: the default model in bf16 on this machine,
# PPD with the shipped prompt tokens (ppd:default = the packaged default tree, ppd:tuned = the tree
# `ppd generate` uses here, both with prompt lookup as in `ppd generate`; ppd-plain:tuned = the prompt
# tokens' guesses alone on that tree) against vanilla, transformers greedy and transformers prompt lookup, on
# the built-in prompt set and on HumanEval. Each run prints per-category tables (speed-up, τ, equality)
# and writes records.jsonl, summary.json and plots under $OUT/<set>/.
#   bash scripts/bench_default.sh                 # LIMIT=32 built-in + HUMANEVAL=16 problems, 128 tokens
# Run it on an otherwise idle machine: every method shares the same cores, and load from other
# processes lands on whichever method happens to run.
set -euo pipefail
OUT=${OUT:-runs/bench/default}
LIMIT=${LIMIT:-32}
HUMANEVAL=${HUMANEVAL:-16}
TOKENS=${TOKENS:-128}
THREADS=${THREADS:-$(nproc)}
common=(--max-new-tokens "$TOKENS" --threads "$THREADS" --methods vanilla,hf-greedy,hf-lookup,ppd,ppd-plain "$@")
ppd bench --prompts builtin --limit "$LIMIT" --out "$OUT/builtin" "${common[@]}"
ppd bench --prompts humaneval --limit "$HUMANEVAL" --out "$OUT/humaneval" "${common[@]}"
