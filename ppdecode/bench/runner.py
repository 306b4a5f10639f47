"""The benchmark loop: load once, warm up, then run every method on every question, interleaved.

Order of work (docs/benchmarks.md):
1. Load the base model once; ``generate()`` runs it as loaded, our engines (and a draft cut from the
   model) share one copy whose linear layers are packed for this CPU (``ppdecode.kernels``).
2. Warm up each method on the first question (short, untimed).
3. For each question, for each repeat, run every method on all the question's turns, in an order
   rotated per question, so that machine drift and cache effects hit every method alike. A method
   answers turn 2 after its own answer to turn 1.
4. Compare greedy outputs with the reference (our vanilla greedy, else transformers greedy).
5. Memory probes (untimed): peak tensor bytes of vanilla and of each PPD method on a few questions.
6. Write ``records.jsonl`` (one line per method and question), ``summary.json`` and the plots.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ppdecode.bench import prompts as prompt_sets
from ppdecode.bench.environment import environment
from ppdecode.bench.memory import PeakRSS, TensorPeak, module_bytes
from ppdecode.bench.methods import EngineMethod, HFMethod, HFMode, Method, RunOutput
from ppdecode.bench.metrics import Record, first_difference, median, overhead, summarise
from ppdecode.bench.prompts import BenchPrompt
from ppdecode.draft_model import resolve_draft
from ppdecode.engine import Engine, TreeChoice
from ppdecode.kernels import kernels_name, pack_linears, packed_copy
from ppdecode.models import DEFAULT_MODEL, LoadedModel, load_model
from ppdecode.prompt_tokens import PromptTokens, default_prompt_tokens
from ppdecode.proposers import LookupProposer, PromptTokenProposer
from ppdecode.proposers.draft import DraftProposer, draft_engine, draft_schedule
from ppdecode.tree.spec import DEFAULT_TREE, TreeSpec, load_tree
from ppdecode.tune.resolve import AUTO, resolve_trees

logger = logging.getLogger(__name__)

FAMILIES = (
    "vanilla",
    "hf-greedy",
    "hf-lookup",
    "hf-assisted",
    "ppd",
    "ppd-plain",
    "lookup",
    "draft",
    "draft-ppd",
    "hybrid",
)
DRAFT_FAMILIES = (
    "draft",
    "draft-ppd",
    "hybrid",
)  # our engine with a draft model (--draft-model, else the default's)
# + hf-assisted when a draft is given
DEFAULT_FAMILIES = ("vanilla", "hf-greedy", "hf-lookup", "ppd", "ppd-plain")
WARMUP_TOKENS = 16


@dataclass
class BenchConfig:
    """What to run. ``trees`` are extra named PPD trees besides the default one."""

    prompts: str = prompt_sets.BUILTIN
    categories: tuple[str, ...] = ()
    limit: int | None = None
    max_new_tokens: int = 256
    methods: tuple[str, ...] = ()  # families; () = the defaults
    baseline: str = "hf-greedy"
    model: str = DEFAULT_MODEL
    prompt_tokens: str | None = "default"
    tree: str = DEFAULT_TREE
    trees: tuple[tuple[str, str], ...] = ()  # (name, path or packaged name)
    temperature: float = 0.0  # > 0 adds sampling variants of vanilla and PPD (lossless)
    draft_model: str | None = None
    draft_length: int = 4  # our draft methods' draft length (where the adaptive schedule starts)
    draft_schedule: str = "adaptive"
    prompt_lookup_num_tokens: int = 10
    repeat: int = 1
    warmup: int = 1
    memory_probes: int = 1
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    pack: bool = True  # our engine decodes with packed linear layers (ppdecode.kernels), as ppd generate
    output_dir: Path | None = None

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        unknown = [m for m in self.methods if m not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown methods {unknown}: choose from {', '.join(FAMILIES)}")
        if self.draft_model is None and set(DRAFT_FAMILIES) & set(self.methods):
            self.draft_model = "default"
        if "hf-assisted" in self.methods and not self.draft_model:
            raise ValueError("method hf-assisted needs a draft model: pass --draft-model")
        draft_schedule(self.draft_schedule)
        if self.draft_length < 1:
            raise ValueError(f"--draft-length must be >= 1, got {self.draft_length}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.repeat < 1:
            raise ValueError(f"--repeat must be >= 1, got {self.repeat}")
        if self.warmup < 0 or self.memory_probes < 0:
            raise ValueError("--warmup and --memory-probes must be >= 0")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        family = self.baseline.split("@")[0].split(":")[0]  # ppd:tuned, vanilla@t0.7 -> ppd, vanilla
        if family not in self.families:
            raise ValueError(
                f"--baseline {self.baseline!r} would not run: add {family!r} to --methods or choose "
                f"a baseline among {', '.join(self.families)}"
            )
        names = [name for name, _ in self.trees]
        if len(set(names)) != len(names) or {"default", "tuned"} & set(names):
            raise ValueError(f"tree names must be unique and not 'default' or 'tuned', got {names}")

    @property
    def families(self) -> tuple[str, ...]:
        if self.methods:
            return self.methods
        return (*DEFAULT_FAMILIES, "hf-assisted") if self.draft_model else DEFAULT_FAMILIES


@dataclass
class BenchResult:
    records: list[Record]
    summary: dict[str, Any]
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def default_output_dir() -> Path:
    return Path("runs") / "bench" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


# ---- setup ------------------------------------------------------------------------------------------
def build_methods(config: BenchConfig, base: LoadedModel) -> tuple[list[Method], dict[str, Any]]:
    """The methods to compare; also what each adds (for the summary).

    ``transformers`` decodes with ``base`` as it is; our engine with a copy whose linear layers are
    packed for this CPU (``config.pack``, where the device has such kernels), the layers ``ppd
    generate`` decodes with.
    """
    families = config.families
    methods: list[Method] = []
    hf_base, base = base, packed_copy(base) if config.pack else base
    vanilla = Engine(base)
    if "vanilla" in families:
        methods.append(EngineMethod("vanilla", vanilla, use_ppd=False))
    if "hf-greedy" in families:
        methods.append(HFMethod("hf-greedy", hf_base, HFMode.GREEDY))
    if "hf-lookup" in families:
        methods.append(HFMethod("hf-lookup", hf_base, HFMode.PROMPT_LOOKUP, config.prompt_lookup_num_tokens))
    if "hf-assisted" in families:
        assert config.draft_model is not None
        hf_draft = resolve_draft(hf_base, config.draft_model)
        methods.append(HFMethod("hf-assisted", hf_base, HFMode.ASSISTED, draft=hf_draft))
    draft_base = None
    if config.draft_model is not None and set(DRAFT_FAMILIES) & set(families):
        draft_base = resolve_draft(base, config.draft_model)
        if config.pack:
            pack_linears(draft_base)
    if "lookup" in families:  # prompt lookup alone in our engine: its copies verified as a chain
        engine = Engine(base, proposer=LookupProposer(PromptTokenProposer()))
        chain = config.prompt_lookup_num_tokens
        methods.append(EngineMethod("lookup", engine, use_ppd=True, lookup_chain=chain))
    ppd_engines: dict[str, Engine] = {}
    if {"ppd", "ppd-plain", "hybrid"} & set(families):
        tokens = load_prompt_tokens(config.prompt_tokens, base)
        default = load_tree(config.tree)
        trees: list[tuple[str, TreeChoice]] = [("default", default)]
        # What `ppd generate` decodes with: the trees tuned for this device (a stored profile or the
        # shipped tree), when there are some and they differ from the default; none for one row where
        # the profile found that no tree pays. Never tuned here.
        tuned = resolve_trees(base, tokens, AUTO, allow_tune=False)
        if tuned != {1: default}:
            trees.append(("tuned", tuned))
        trees += [(name, load_tree(path)) for name, path in config.trees]
        for name, spec in trees:
            ppd_engines[name] = Engine(base, tokens, spec)
            if "ppd" in families:
                methods.append(EngineMethod(f"ppd:{name}", ppd_engines[name], use_ppd=True))
        if "ppd-plain" in families:
            # The prompt tokens' guesses alone, without prompt lookup, on the tree `ppd generate` uses.
            name = "tuned" if "tuned" in ppd_engines else "default"
            methods.append(EngineMethod(f"ppd-plain:{name}", ppd_engines[name], use_ppd=True, lookup=False))
    if draft_base is not None and set(DRAFT_FAMILIES) & set(families):
        methods += draft_methods(config, base, draft_base, families, ppd_engines)
    if config.temperature > 0:
        t = f"@t{config.temperature:g}"
        if "vanilla" in families:
            methods.append(
                EngineMethod(f"vanilla{t}", vanilla, use_ppd=False, temperature=config.temperature)
            )
        if "ppd" in families:
            engine = ppd_engines["default"]
            methods.append(
                EngineMethod(f"ppd:default{t}", engine, use_ppd=True, temperature=config.temperature)
            )
    names = [m.name for m in methods]
    if config.baseline not in names:
        raise ValueError(f"--baseline {config.baseline!r} is not among the methods run: {', '.join(names)}")
    info = {
        m.name: method_info(m, guesses_info(m) if isinstance(m, EngineMethod) and m.ppd else {})
        for m in methods
    }
    return methods, info


def draft_methods(
    config: BenchConfig,
    base: LoadedModel,
    draft_base: LoadedModel,
    families: Sequence[str],
    ppd_engines: dict[str, Engine],
) -> list[Method]:
    """Our engine with a draft model: alone (a chain under the root), writing its draft with PPD, and
    the hybrid: the target's tuned tree with prompt lookup and the draft's tokens (written with PPD
    when the draft has prompt tokens of its own)."""

    def proposer(ppd: bool) -> DraftProposer:
        engine = draft_engine(draft_base, ppd)
        return DraftProposer(engine, length=config.draft_length, schedule=config.draft_schedule)

    methods: list[Method] = []
    if "draft" in families:
        engine = Engine(base, draft=proposer(False))
        methods.append(EngineMethod("draft", engine, use_ppd=True, lookup=False))
    if "draft-ppd" in families:
        engine = Engine(base, draft=proposer(True))
        methods.append(EngineMethod("draft-ppd", engine, use_ppd=True, lookup=False))
    if "hybrid" in families:
        name = "tuned" if "tuned" in ppd_engines else "default"
        target = ppd_engines[name]
        draft = proposer(has_prompt_tokens(draft_base))
        engine = Engine(base, target.prompt_tokens, target.tree, draft=draft)
        methods.append(EngineMethod(f"hybrid:{name}", engine, use_ppd=True))
    return methods


def has_prompt_tokens(base: LoadedModel) -> bool:
    """Trained prompt tokens are prepared or shipped for ``base``."""
    from ppdecode.prepare.registry import prepared_tokens_path
    from ppdecode.prompt_tokens import CONFIG, packaged_tokens_path

    return prepared_tokens_path(base) is not None or (packaged_tokens_path(base.name) / CONFIG).is_file()


def method_info(method: Method, extra: dict[str, Any]) -> dict[str, Any]:
    """What summary.json records of a method: its kind, its extra parameters and buffers, the linear
    kernels it decodes with, and ``extra``."""
    base = method.engine.base if isinstance(method, EngineMethod) else getattr(method, "base", None)
    return {
        "kernels": None if base is None else kernels_name(base),
        "greedy": method.greedy,
        "ppd": method.ppd,
        "extra_parameters": method.extra_parameters(),
        "extra_buffer_bytes": method.extra_buffer_bytes(),
        **extra,
    }


def load_prompt_tokens(spec: str | None, base: LoadedModel) -> PromptTokens:
    """The prompt tokens a benchmark decodes with: ``default`` (or None) = the shipped ones, else a path."""
    if spec in (None, "default"):
        return default_prompt_tokens(base)
    return PromptTokens.load(spec, base)


def guesses_info(method: EngineMethod) -> dict[str, Any]:
    """Where an engine method's guesses come from: its tree, its draft model (and the draft's tree)."""
    engine, info = method.engine, {}
    if engine.tree is not None:
        info["tree"] = spec_info(engine.tree)
    if engine.draft is not None:
        draft = engine.draft.engine
        info["draft"] = {
            "model": draft.base.name,
            "ppd": draft.prompt_tokens is not None,
            "tree": spec_info(draft.tree) if draft.tree is not None else None,
            "length": engine.draft.length,
            "schedule": engine.draft.schedule.value,
        }
    return info


def spec_info(tree: TreeSpec) -> dict[str, Any]:
    """What a summary records of a tree: its inputs per depth, top-k per depth, and its meta."""
    return {
        "input_sizes": {d: tree.input_size(d) for d in range(tree.num_prompt_tokens + 1)},
        "top_k": list(tree.top_k),
        "meta": tree.meta,
    }


# ---- running ----------------------------------------------------------------------------------------
@dataclass
class _Answer:
    """One method's answer to all turns of one question, in one repeat."""

    outputs: list[RunOutput]
    peak_rss: int
    peak_alloc: int | None  # CUDA only

    @property
    def seconds(self) -> float:
        return sum(o.seconds for o in self.outputs)

    @property
    def token_ids(self) -> list[int]:
        return [t for o in self.outputs for t in o.token_ids]


def answer(
    method: Method, engine: Engine, prompt: BenchPrompt, max_new_tokens: int, seed: int
) -> list[RunOutput]:
    """Run ``method`` on every turn of ``prompt``; its own answer to turn i joins the conversation."""
    if not prompt.chat or (not engine.base.is_chat and len(prompt.turns) == 1):
        ids = engine.encode(prompt.turns[0], chat=False)  # code completion, or a model without a template
        return [method.run(ids, max_new_tokens, seed)]
    if not engine.base.is_chat:
        raise ValueError(
            f"question {prompt.question_id} has {len(prompt.turns)} turns but {engine.base.name} has no chat "
            "template; use a chat model or single-turn prompts (e.g. --prompts humaneval)"
        )
    messages: list[dict[str, str]] = []
    outputs: list[RunOutput] = []
    eos = set(engine.base.eos_token_ids)
    for turn_index, turn in enumerate(prompt.turns):
        messages.append({"role": "user", "content": turn})
        ids = engine.encode(messages, chat=True)
        out = method.run(ids, max_new_tokens, seed + turn_index)
        outputs.append(out)
        reply = engine.tokenizer.decode([t for t in out.token_ids if t not in eos], skip_special_tokens=True)
        messages.append({"role": "assistant", "content": reply})
    return outputs


def run_bench(
    config: BenchConfig,
    base: LoadedModel | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run the benchmark ``config`` describes; ``base`` reuses an already loaded model."""
    with torch_threads(config.threads):
        return _run_bench(config, base, progress)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` (None: unchanged) inside the block only."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)  # a library call leaves the process as it found it


def _run_bench(
    config: BenchConfig, base: LoadedModel | None, progress: Callable[[str], None] | None
) -> BenchResult:
    from ppdecode.bench.plots import save_plots
    from ppdecode.bench.report import build_summary

    questions = prompt_sets.select(
        prompt_sets.load_prompt_set(config.prompts), config.categories, config.limit
    )
    if base is None:
        base = load_model(config.model, device=config.device, dtype=config.dtype)
    env = environment(base)
    methods, method_info = build_methods(config, base)
    engine = Engine(base)  # for encoding prompts and answers
    say = progress or (lambda message: logger.info("%s", message))
    say(
        f"{len(questions)} questions × {len(methods)} methods ({', '.join(m.name for m in methods)}), "
        f"{config.max_new_tokens} new tokens, repeat {config.repeat}, {env['device']} {env['dtype']}"
    )

    with torch.inference_mode():
        _warm_up(methods, engine, questions[0], config)
        answers = _timed_runs(methods, engine, questions, config, say)
        memory = _memory_probes(methods, engine, questions[: config.memory_probes], config, say)
    records = _records(methods, questions, answers, base.tokenizer)

    if hasattr(os, "getloadavg"):
        env["load_average_at_end"] = list(os.getloadavg())  # other work on the machine skews timings
    out_dir = config.output_dir or default_output_dir()
    summary = build_summary(
        records, summarise(records, config.baseline), _config_json(config), env, method_info, memory
    )
    files = write_run(out_dir, [record.to_json() for record in records], summary)
    files.update(save_plots(summary, records, out_dir))
    return BenchResult(records, summary, out_dir, files)


def write_run(out_dir: Path, lines: Sequence[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Path]:
    """``records.jsonl`` (one JSON object per line) and ``summary.json`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"records": out_dir / "records.jsonl", "summary": out_dir / "summary.json"}
    with files["records"].open("w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    files["summary"].write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return files


def _warm_up(methods: Sequence[Method], engine: Engine, question: BenchPrompt, config: BenchConfig) -> None:
    short = BenchPrompt(question.question_id, question.category, question.turns[:1], question.chat)
    tokens = min(config.max_new_tokens, WARMUP_TOKENS)
    for _ in range(config.warmup):
        for method in methods:
            answer(method, engine, short, tokens, config.seed)


def _timed_runs(
    methods: Sequence[Method],
    engine: Engine,
    questions: Sequence[BenchPrompt],
    config: BenchConfig,
    say: Callable[[str], None],
) -> dict[tuple[str, str], list[_Answer]]:
    answers: dict[tuple[str, str], list[_Answer]] = {}
    device = engine.base.device
    for index, question in enumerate(questions):
        shift = index % len(methods)
        order = [*methods[shift:], *methods[:shift]]  # rotate who goes first
        seed = config.seed + 1000 * index
        for _ in range(config.repeat):
            for method in order:
                with PeakRSS() as rss, contextlib.ExitStack() as stack:
                    cuda = stack.enter_context(TensorPeak(device)) if device.type == "cuda" else None
                    outputs = answer(method, engine, question, config.max_new_tokens, seed)
                run = _Answer(outputs, rss.peak, cuda.peak if cuda is not None else None)
                answers.setdefault((method.name, question.question_id), []).append(run)
        line = ", ".join(f"{m.name} {_tps(answers[(m.name, question.question_id)]):.1f}" for m in methods)
        say(f"[{index + 1}/{len(questions)}] {question.question_id}: tokens/s {line}")
    return answers


def _tps(runs: list[_Answer]) -> float:
    tokens = len(runs[0].token_ids)
    seconds = median([r.seconds for r in runs])
    return tokens / seconds if seconds > 0 else 0.0


def _records(
    methods: Sequence[Method],
    questions: Sequence[BenchPrompt],
    answers: dict[tuple[str, str], list[_Answer]],
    tokenizer: Any,
) -> list[Record]:
    """One record per (method, question); greedy outputs are compared with the reference method's."""
    names = [m.name for m in methods]
    reference = "vanilla" if "vanilla" in names else ("hf-greedy" if "hf-greedy" in names else None)
    records: list[Record] = []
    for method in methods:
        for question in questions:
            runs = answers[(method.name, question.question_id)]
            first = runs[0]  # tokens, steps and τ of the first repeat (greedy repeats are identical)
            equal: bool | None = None
            diff: int | None = None
            if method.greedy and reference is not None and method.name != reference:
                expected = answers[(reference, question.question_id)][0].token_ids
                diff = first_difference(first.token_ids, expected)
                equal = diff is None
            lengths = [o.accept_lengths for o in first.outputs]
            known = all(x is not None for x in lengths)
            allocs = [r.peak_alloc for r in runs if r.peak_alloc is not None]
            turns = [
                {
                    "new_tokens": len(o.token_ids),
                    "seconds": o.seconds,
                    "finish_reason": o.finish_reason,
                    "text": tokenizer.decode(o.token_ids, skip_special_tokens=True),
                    "token_ids": o.token_ids,
                }
                for o in first.outputs
            ]
            records.append(
                Record(
                    method=method.name,
                    question_id=question.question_id,
                    category=question.category,
                    new_tokens=len(first.token_ids),
                    seconds=median([r.seconds for r in runs]),
                    steps=sum(o.steps for o in first.outputs),
                    accept_lengths=[t for x in lengths for t in x or []] if known else None,
                    greedy=method.greedy,
                    equal=equal,
                    first_diff=diff,
                    seconds_repeats=[r.seconds for r in runs],
                    peak_rss_bytes=max(r.peak_rss for r in runs),
                    peak_alloc_bytes=max(allocs) if allocs else None,
                    turns=turns,
                    draft_steps=_draft_steps(first.outputs),
                )
            )
    return records


def _draft_steps(outputs: Sequence[RunOutput]) -> int | None:
    """The draft model's forwards over all turns; None for a method without a draft."""
    steps = [o.draft_steps for o in outputs]
    return None if any(s is None for s in steps) else sum(s or 0 for s in steps)


def _memory_probes(
    methods: Sequence[Method],
    engine: Engine,
    questions: Sequence[BenchPrompt],
    config: BenchConfig,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Peak tensor bytes allocated by one run of vanilla and of each greedy PPD method (first turn only)."""
    probed = [m for m in methods if isinstance(m, EngineMethod) and m.greedy]
    if not questions or not probed:
        return {"probes": [], "methods": {}}
    device = engine.base.device
    probes: list[dict[str, Any]] = []
    for question in questions:
        short = BenchPrompt(question.question_id, question.category, question.turns[:1], question.chat)
        peaks: dict[str, int] = {}
        for method in probed:
            with TensorPeak(device) as probe:
                answer(method, engine, short, config.max_new_tokens, config.seed)
            peaks[method.name] = probe.peak
        probes.append({"question_id": question.question_id, "peak_tensor_bytes": peaks})
        say(
            f"memory probe {question.question_id}: "
            + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in peaks.items())
        )
    weights = module_bytes(engine.base.model)
    per_method: dict[str, Any] = {}
    for method in probed:
        peak = max(p["peak_tensor_bytes"][method.name] for p in probes)
        entry: dict[str, Any] = {"peak_tensor_bytes": peak}
        if method.ppd and "vanilla" in probes[0]["peak_tensor_bytes"]:
            step = max(
                p["peak_tensor_bytes"][method.name] - p["peak_tensor_bytes"]["vanilla"] for p in probes
            )
            entry.update(ppd_overhead(method, step, weights))
        per_method[method.name] = entry
    return {
        "method": "tensor accounting" if device.type != "cuda" else "torch.cuda.max_memory_allocated",
        "model_weight_bytes": weights,
        "probes": probes,
        "methods": per_method,
    }


def ppd_overhead(method: EngineMethod, step_delta: int, weight_bytes: int) -> dict[str, Any]:
    """Memory beyond vanilla: prompt tokens (and a draft's own parameters and tokens) + tree buffers +
    the step peak's excess over vanilla's (a draft's KV cache is part of that peak)."""
    param_bytes = sum(t.numel() * t.element_size() for t in method.extra_tensors())
    buffer_bytes = method.extra_buffer_bytes()
    total = param_bytes + buffer_bytes + max(step_delta, 0)
    return {
        "extra_parameter_bytes": param_bytes,
        "tree_buffer_bytes": buffer_bytes,
        "step_peak_delta_bytes": step_delta,
        "overhead_bytes": total,
        "overhead_percent_of_weights": overhead(total, 0, weight_bytes).percent,
    }


def _config_json(config: BenchConfig) -> dict[str, Any]:
    data = asdict(config)
    data["output_dir"] = str(config.output_dir) if config.output_dir else None
    data["families"] = list(config.families)
    return data
