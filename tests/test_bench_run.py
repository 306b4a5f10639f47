"""A tiny end-to-end benchmark on the real default model (float32, so greedy outputs must match exactly)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from ppdecode.bench.methods import HFMethod, HFMode
from ppdecode.bench.metrics import OVERALL
from ppdecode.bench.report import group_table, pooled_summary, tables
from ppdecode.bench.runner import BenchConfig, BenchResult, run_bench
from ppdecode.cli import app
from ppdecode.engine import Engine
from ppdecode.kernels import packed_copy
from ppdecode.models import LoadedModel
from ppdecode.prompt_tokens import default_prompt_tokens
from ppdecode.tree.builder import Accuracy, build_tree
from ppdecode.tune import resolve as resolve_module
from ppdecode.tune.latency import LatencyProfile
from ppdecode.tune.store import HardwareProfile, current_key, save_profile
from ppdecode.tune.tuner import packaged_accuracy_path

pytestmark = pytest.mark.slow

QUESTIONS = [
    {"question_id": 1, "category": "chat", "turns": ["Name a colour.", "Now name a fruit of that colour."]},
    {"question_id": 2, "category": "math", "turns": ["What is 3 + 4?"]},
]
METHODS = ["vanilla", "hf-greedy", "hf-lookup", "ppd:default"]


def no_tuned_tree(patch: pytest.MonkeyPatch, root: Path) -> None:
    """Neither this machine's stored profiles nor the shipped tuned tree: ppd:tuned stays out."""
    patch.setenv("PPDECODE_CACHE", str(root / "cache"))
    patch.setattr(resolve_module, "shipped_tree_path", lambda model, kind: root / "no-shipped-tree.json")


def one_question_run(base: LoadedModel, root: Path, **settings: Any) -> BenchResult:
    """A benchmark of the one math question against our vanilla, untimed warm-up and probes off
    unless ``settings`` say otherwise."""
    questions = root / "q.jsonl"
    questions.write_text(json.dumps(QUESTIONS[1]) + "\n")
    options: dict[str, Any] = dict(baseline="vanilla", warmup=0, memory_probes=0, threads=1)
    config = BenchConfig(prompts=str(questions), output_dir=root / "out", **{**options, **settings})
    return run_bench(config, base=base)


@pytest.fixture(scope="module")
def bench_run(smollm_f32: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    questions = root / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    config = BenchConfig(
        prompts=str(questions),
        max_new_tokens=8,
        methods=("vanilla", "hf-greedy", "hf-lookup", "ppd"),
        warmup=0,
        memory_probes=1,
        threads=1,  # the machine is shared: more threads than free cores slows every forward down
        output_dir=root / "out",
    )
    with pytest.MonkeyPatch.context() as patch:
        no_tuned_tree(patch, root)
        run_bench(config, base=smollm_f32)
    return root / "out", questions


def test_records_one_line_per_method_and_question(bench_run: tuple[Path, Path]) -> None:
    out, _ = bench_run
    lines = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["method"], r["question_id"]) for r in lines] == [(m, q) for m in METHODS for q in ("1", "2")]
    for r in lines:
        assert len(r["turns"]) == (2 if r["question_id"] == "1" else 1)  # turn 2 answered after turn 1
        assert r["new_tokens"] == sum(t["new_tokens"] for t in r["turns"]) > 0
        assert all(t["new_tokens"] <= 8 for t in r["turns"])
        assert r["seconds"] > 0 and r["tokens_per_s"] > 0 and r["peak_rss_bytes"] > 0
        if r["method"] in ("vanilla", "hf-greedy"):
            assert r["tau"] == 1.0
    by = {(r["method"], r["question_id"]): r for r in lines}
    for method in ("hf-greedy", "hf-lookup", "ppd:default"):
        for q in ("1", "2"):
            # float32: our vanilla engine, transformers greedy, prompt lookup and PPD write the same tokens
            assert by[(method, q)]["equal"] is True, (method, q)
            assert [t["token_ids"] for t in by[(method, q)]["turns"]] == [
                t["token_ids"] for t in by[("vanilla", q)]["turns"]
            ]
    assert by[("vanilla", "1")]["equal"] is None  # the reference itself


def test_summary_and_plots(bench_run: tuple[Path, Path]) -> None:
    out, _ = bench_run
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["groups"]) == ["chat", "math", OVERALL]
    overall = summary["groups"][OVERALL]
    assert list(overall) == METHODS
    assert overall["hf-greedy"]["speedup_total"] == pytest.approx(1.0)
    assert overall["ppd:default"]["equal_rate"] == 1.0
    env = summary["environment"]
    for key in ("device", "dtype", "threads", "torch", "transformers", "git", "model_weight_bytes"):
        assert key in env
    assert env["dtype"] == "float32"
    assert summary["methods"]["ppd:default"]["extra_parameters"] > 0
    ppd_memory = summary["memory"]["methods"]["ppd:default"]
    assert ppd_memory["overhead_bytes"] >= ppd_memory["extra_parameter_bytes"] > 0
    assert ppd_memory["overhead_percent_of_weights"] < 5
    for name in ("speedup_per_category.png", "tau_histogram.png", "tokens_per_s.png"):
        assert (out / name).stat().st_size > 1000


def test_cli_shows_a_summary(bench_run: tuple[Path, Path]) -> None:
    out, _ = bench_run
    result = CliRunner().invoke(app, ["bench", "--show", str(out / "summary.json")])
    assert result.exit_code == 0, result.output
    assert "overall" in result.output and "ppd:default" in result.output and "memory" in result.output


def test_pooled_tables_recompute_the_chosen_categories(bench_run: tuple[Path, Path]) -> None:
    out, _ = bench_run
    summary = pooled_summary([out, out], ["math"])  # the same run twice: every record counted twice
    assert list(summary["groups"]) == ["math", OVERALL]
    alone = json.loads((out / "summary.json").read_text())["groups"]["math"]["ppd:default"]
    pooled = summary["groups"][OVERALL]["ppd:default"]
    assert pooled["questions"] == 2 * alone["questions"] and pooled["steps"] == 2 * alone["steps"]
    assert pooled["tau"] == pytest.approx(alone["tau"])
    result = CliRunner().invoke(app, ["bench", "--show", str(out), "--categories", "math"])
    assert result.exit_code == 0, result.output
    assert "math" in result.output and "chat" not in result.output
    with pytest.raises(ValueError, match="unknown categories"):
        pooled_summary([out], ["poetry"])


@pytest.fixture
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.usefixtures("one_thread")
def test_assisted_generation_equals_greedy(smollm_f32: LoadedModel, smollm_bf16: LoadedModel) -> None:
    ids = Engine(smollm_f32).encode("Name three animals.")
    greedy = HFMethod("hf-greedy", smollm_f32, HFMode.GREEDY).run(ids, 8, None)
    assisted = HFMethod("hf-assisted", smollm_f32, HFMode.ASSISTED, draft=smollm_bf16).run(ids, 8, None)
    assert assisted.token_ids == greedy.token_ids
    assert assisted.accept_lengths is not None and len(assisted.accept_lengths) == assisted.steps
    assert sum(assisted.accept_lengths) <= len(assisted.token_ids) - 1  # the prefill commits the rest


def test_draft_and_lookup_methods_run_and_equal_vanilla(
    smollm_f32: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our prompt lookup alone, the demonstration draft alone, writing with PPD, and the hybrid: each
    decodes vanilla's tokens and gets a memory entry (the draft's own parameters counted, shared ones
    not)."""
    no_tuned_tree(monkeypatch, tmp_path)
    methods = ("vanilla", "lookup", "draft", "draft-ppd", "hybrid")
    result = one_question_run(smollm_f32, tmp_path, max_new_tokens=12, methods=methods, memory_probes=1)
    by_method = {r.method: r for r in result.records}
    assert set(by_method) == {"vanilla", "lookup", "draft", "draft-ppd", "hybrid:default"}
    assert all(r.equal for name, r in by_method.items() if name != "vanilla"), result.records
    memory = result.summary["memory"]["methods"]
    # the draft's own: a copy of 8 of the 30 layers (its trained updates merged), its exit and shortlisted
    # head; the embeddings are the target's
    draft_params = memory["draft"]["extra_parameter_bytes"]
    assert 0 < draft_params < memory["draft-ppd"]["extra_parameter_bytes"]  # + the draft's prompt tokens
    assert 0.15 < draft_params / result.summary["memory"]["model_weight_bytes"] < 0.35
    # what drafting cost: the draft model's forwards, per record and per target step in the summary
    assert by_method["vanilla"].draft_steps is None and by_method["lookup"].draft_steps is None
    assert all(by_method[name].draft_steps for name in ("draft", "draft-ppd", "hybrid:default"))
    overall = result.summary["groups"][OVERALL]
    assert overall["vanilla"]["draft_steps_per_step"] is None
    plain = overall["draft"]
    assert plain["draft_steps_per_step"] == by_method["draft"].draft_steps / by_method["draft"].steps
    columns = [column.header for column in group_table(result.summary, OVERALL).columns]
    assert "draft fwd/step" in columns


def test_config_refuses_misuse() -> None:
    with pytest.raises(ValueError, match="unknown methods"):
        BenchConfig(methods=("medusa",))
    with pytest.raises(ValueError, match="needs a draft model"):
        BenchConfig(methods=("hf-assisted",))
    with pytest.raises(ValueError, match="tree names"):
        BenchConfig(trees=(("default", "x.json"),))
    # before any model loads: the baseline's method must run
    with pytest.raises(ValueError, match="add 'hf-greedy' to --methods"):
        BenchConfig(methods=("vanilla", "draft"))
    assert BenchConfig(methods=("vanilla", "ppd"), baseline="ppd:tuned").baseline == "ppd:tuned"


def test_named_trees_and_sampling_variants(
    smollm_f32: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_tuned_tree(monkeypatch, tmp_path)
    result = one_question_run(
        smollm_f32,
        tmp_path,
        max_new_tokens=4,
        methods=("vanilla", "ppd", "ppd-plain"),
        trees=(("again", "default"),),
        temperature=0.7,
    )
    by = {r.method: r for r in result.records}
    assert list(by) == [
        "vanilla",
        "ppd:default",
        "ppd:again",
        "ppd-plain:default",
        "vanilla@t0.7",
        "ppd:default@t0.7",
    ]
    assert by["ppd:again"].equal is True  # greedy with another (here: the same) tree
    assert by["ppd-plain:default"].equal is True  # the prompt tokens alone, without prompt lookup
    assert by["vanilla@t0.7"].equal is None and not by["vanilla@t0.7"].greedy  # sampling: not compared
    assert all(r.new_tokens > 0 for r in result.records)
    assert result.summary["memory"]["methods"] == {}


@pytest.mark.usefixtures("one_thread")
def test_the_tree_tuned_for_this_device_joins_as_ppd_tuned(
    smollm_f32: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_tuned_tree(monkeypatch, tmp_path)
    tokens = default_prompt_tokens(smollm_f32)
    tree = build_tree(Accuracy.load(packaged_accuracy_path(smollm_f32.name)), 7)
    save_profile(
        HardwareProfile(
            key=current_key(packed_copy(smollm_f32), tokens),  # the kernels our engine runs in a bench
            latency=LatencyProfile((1, 8), (10.0, 12.0), 256, 1),
            rows=(),
            vanilla=None,
            predicted_budget=7,
            chosen_budget=7,
            tree=tree,
            quick=True,
            accuracy_source="test",
        )
    )
    result = one_question_run(smollm_f32, tmp_path, max_new_tokens=6, methods=("vanilla", "ppd"))
    by = {r.method: r for r in result.records}
    assert list(by) == ["vanilla", "ppd:default", "ppd:tuned"]
    assert by["ppd:tuned"].equal is True
    assert result.summary["methods"]["ppd:tuned"]["tree"]["input_sizes"] == {
        d: tree.input_size(d) for d in range(tree.num_prompt_tokens + 1)
    }
    console = Console(width=200, record=True)
    console.print(tables(result.summary))
    overall = console.export_text().split("overall")[1]
    assert "τ expected" in overall and f"{tree.meta['expected_tau']:.2f}" in overall
