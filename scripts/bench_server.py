#!/usr/bin/env python3
"""Load benchmark of the HTTP server: throughput and latency at several numbers of concurrent clients.

    python3 scripts/bench_server.py                       # starts its own server on loopback
    python3 scripts/bench_server.py --url http://127.0.0.1:8000 --api-key KEY
    python3 scripts/bench_server.py --concurrency 1 8 32 --requests 32 --max-tokens 64 --out server.jsonl

Every level answers the same prompts (the built-in set's first turns, greedy); ``1`` is the
one-at-a-time baseline the others' speedup is measured against. Prints a table and writes one JSON
line per level (the summary, and with --records each request's timings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server; without it one is started here")
    parser.add_argument("--api-key")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model for the server started here")
    parser.add_argument(
        "--prompt-tokens", default="default", help="'default', a directory, or 'none' (vanilla)"
    )
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=16, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--no-ppd", action="store_true", help="ask for vanilla decoding (request field ppd=false)"
    )
    parser.add_argument("--out", type=Path, help="JSON lines file to append the results to")
    parser.add_argument("--records", action="store_true", help="also write every request's timings")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from ppdecode.bench.prompts import read_builtin
    from ppdecode.server.loadtest import add_speedups, format_table, run_load, summarise

    questions = [q.turns[0] for q in read_builtin() if q.chat]
    prompts = [questions[i % len(questions)] for i in range(args.requests)]

    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            from ppdecode import load
            from ppdecode.server import ServerConfig, create_app
            from ppdecode.server.runner import BackgroundServer

            tokens = None if args.prompt_tokens == "none" else args.prompt_tokens
            engine = load(
                args.model,
                prompt_tokens=tokens,
                device=args.device,
                dtype=args.dtype,
                max_batch=args.max_batch,
            )
            config = ServerConfig(api_key=args.api_key, max_queue=max(args.concurrency))
            url = stack.enter_context(BackgroundServer(create_app(engine, config))).url
        # one short request first, so that no level pays for warming up
        asyncio.run(run_load(url, prompts[:1], 1, 8, api_key=args.api_key))
        runs = [
            asyncio.run(run_load(url, prompts, c, args.max_tokens, api_key=args.api_key, ppd=not args.no_ppd))
            for c in args.concurrency
        ]
    summaries = [summarise(run) for run in runs]
    add_speedups(summaries)
    print(format_table(summaries))
    if args.out is not None:
        with args.out.open("a") as f:
            for run, summary in zip(runs, summaries, strict=True):
                line = {
                    "kind": "server_load",
                    "max_tokens": args.max_tokens,
                    "ppd": not args.no_ppd,
                    **summary,
                }
                if args.records:
                    line["records"] = [
                        {"ttft_s": r.ttft_s, "e2e_s": r.e2e_s, "tokens": r.completion_tokens, "ppd": r.ppd}
                        for r in run.records
                    ]
                f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
