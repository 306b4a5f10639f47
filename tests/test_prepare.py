"""`ppd prepare`: the plan for a budget, the refusals, and a tiny end-to-end run that is interrupted,
resumed, registered and then used by `ppd generate` and `ppdecode.load` with no extra flags."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ppdecode.models import LoadedModel, model_dir
from ppdecode.prepare import checks, registry
from ppdecode.prepare.plan import (
    MAX_PROMPTS,
    MIN_PROMPTS,
    Recipe,
    Throughput,
    make_plan,
    parse_duration,
    split_sources,
)

MODEL = "smollm2-135m-instruct"
# A tiny run: 12 prompts answered with 24 tokens, 6 training steps, a quick tune (budget under 10 min).
TINY = ["--time-budget", "3m", "--prompts", "12", "--steps", "6", "--max-new-tokens", "24",
        "--max-prompt-tokens", "48", "--checkpoint-every", "2"]
CRASH_AT = 3


# ---- the plan (pure) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("45m", 2700), ("2h", 7200), ("1h30m", 5400), ("60", 3600), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "0", "-5m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="time budget"):
        parse_duration(text)


RATES = Throughput(batch=32, prefill_s=0.5, decode_step_s=0.2, single_step_s=0.045, train_step_s=2.5)


def test_the_plan_scales_with_the_budget_and_trains_three_epochs() -> None:
    recipe = Recipe()
    small, hour, day = (make_plan(s, recipe, RATES, chat=True, docs=True) for s in (300, 3600, 86400))
    assert MIN_PROMPTS <= small.prompts < hour.prompts < day.prompts <= MAX_PROMPTS
    assert small.steps < hour.steps < day.steps
    for plan in (small, hour, day):
        train_prompts = plan.prompts * (1 - plan.heldout_percent / 100)
        assert plan.steps == pytest.approx(3 * train_prompts / recipe.train_batch_size, abs=1)
        assert sum(plan.sources.values()) == plan.prompts
    # an hour of the default recipe's rates on this CPU is about the shipped recipe (1,149 prompts)
    assert 700 < hour.prompts < 1500
    assert sum(hour.estimates.values()) == pytest.approx(3600, rel=0.25)
    assert small.heldout_percent > hour.heldout_percent == 10.0
    assert small.tune.quick and not day.tune.quick and day.tune.confirm >= 3


def test_plan_overrides_and_refusals() -> None:
    plan = make_plan(600, Recipe(), None, chat=True, docs=True, prompts=50, steps=7)
    assert (plan.prompts, plan.steps, plan.estimates) == (50, 7, {})
    with pytest.raises(ValueError, match="throughput probe"):
        make_plan(600, Recipe(), None, chat=True, docs=True)
    with pytest.raises(ValueError, match="--prompts"):
        make_plan(600, Recipe(), None, chat=True, docs=True, prompts=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Recipe(max_new_tokens=4)


def test_sources_fall_back_to_plain_text_without_a_chat_template() -> None:
    assert split_sources(100, chat=True, docs=True) == {"self-instruct": 50, "python-docs": 25,
                                                        "python-stdlib": 25}
    assert split_sources(100, chat=False, docs=True) == {"python-docs": 50, "python-stdlib": 50}
    assert split_sources(100, chat=False, docs=False) == {"python-stdlib": 100}
    assert split_sources(0, chat=True, docs=True) == {}
    # the user's own prompts come first, the built-in sources fill up the rest
    plan = make_plan(600, Recipe(), None, chat=True, docs=True, file_prompts=30, prompts=40)
    assert sum(plan.sources.values()) == 10


# ---- checks --------------------------------------------------------------------------------------

SHAPE = checks.ModelShape(layers=30, hidden=576, intermediate=1536, heads=9, vocab=49152,
                          kv_bytes_per_token=23040, element_size=2)


def test_the_recipe_shrinks_to_fit_memory_or_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    recipe = Recipe()
    need = checks.recipe_bytes(SHAPE, recipe)
    assert 0.3 * 2**30 < need < 4 * 2**30  # the default recipe on the 135M model: about a GiB
    assert checks.fit_memory(recipe, SHAPE, 64 * 2**30) == recipe
    with caplog.at_level(logging.WARNING):
        fitted = checks.fit_memory(recipe, SHAPE, need // 3)
    assert checks.recipe_bytes(SHAPE, fitted) <= need // 3
    assert fitted.data_batch_size < recipe.data_batch_size and "shrinking" in caplog.text
    with pytest.raises(ValueError, match="GiB are free"):
        checks.fit_memory(recipe, SHAPE, 2**20)
    assert checks.fit_memory(recipe, SHAPE, None) == recipe  # unknown: not checked


def test_the_recipe_fits_the_context_window_or_is_refused() -> None:
    recipe = Recipe(max_prompt_tokens=128, max_new_tokens=112)
    assert checks.fit_context(recipe, 8192) == recipe
    fitted = checks.fit_context(recipe, 256)
    assert fitted.sequence_length <= 256 and fitted.max_new_tokens >= checks.MIN_NEW_TOKENS
    with pytest.raises(ValueError, match="reads at most 64 tokens"):
        checks.fit_context(recipe, 64)


def test_a_model_without_eos_is_refused() -> None:
    base = LoadedModel("no-eos", None, None, "0" * 16, ())
    with pytest.raises(ValueError, match="no EOS token"):
        checks.check_model(base)


def test_the_probe_measures_positive_rates(smollm_bf16: LoadedModel) -> None:
    from ppdecode.prepare.probe import available_memory, probe_throughput

    recipe = Recipe(max_new_tokens=24, max_prompt_tokens=48, cuts=8, data_batch_size=4, train_batch_size=2)
    rates = probe_throughput(smollm_bf16, recipe)
    assert min(rates.prefill_s, rates.decode_step_s, rates.single_step_s, rates.train_step_s) >= 0
    assert rates.decode_step_s > 0 and rates.train_step_s > 0
    plan = make_plan(1200, recipe, rates, chat=True, docs=True)
    assert MIN_PROMPTS <= plan.prompts <= MAX_PROMPTS and set(plan.estimates) >= {"data", "train"}
    assert (available_memory(smollm_bf16.device) or 1) > 0


# ---- end to end ----------------------------------------------------------------------------------


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty user cache, except for the converted default model (linked, not converted again)."""
    _, converted = model_dir(MODEL)  # converts into the real cache once, if it is not there yet
    root = tmp_path_factory.mktemp("cache")
    (root / "models").mkdir()
    (root / "models" / MODEL).symlink_to(converted.resolve(), target_is_directory=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small shared CPU: spinning threads slow every forward down
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PPDECODE_CACHE", str(root))
        yield root
    torch.set_num_threads(threads)


def _invoke(args: list[str]) -> str:
    """Run a `ppd` command in this process; its stdout (the commands quieten the package's logger)."""
    from ppdecode.cli import app

    logger = logging.getLogger("ppdecode")
    level = logger.level
    try:
        result = CliRunner().invoke(app, args, catch_exceptions=False)
    finally:
        logger.setLevel(level)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_prepare_resumes_registers_and_is_found_by_generate(
    cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from ppdecode import load
    from ppdecode.prepare.pipeline import PrepareConfig, prepare
    from ppdecode.prepare.stages import WorkDir
    from ppdecode.tree.spec import TreeSpec
    from ppdecode.tune.resolve import resolve_trees
    from ppdecode.tune.store import artifact_identity, profiles_dir, tokens_identity

    work = WorkDir(tmp_path / "work")
    # 1. interrupted during training, after the checkpoint of step 2
    config = PrepareConfig(
        time_budget_s=180, out=str(work.root), prompts=12, steps=6, max_new_tokens=24,
        max_prompt_tokens=48, checkpoint_every=2,
    )

    def crash(step: int, loss: float) -> None:
        if step == CRASH_AT:
            raise Crash(step)

    with pytest.raises(Crash):
        prepare(config, on_train_step=crash)
    stages = json.loads(work.stages.read_text())
    assert stages["plan"]["state"] == stages["data"]["state"] == "done"
    assert stages["train"]["state"] == "running"
    assert work.data.is_file() and not work.tokens.exists()
    assert (work.root / "tokens.ckpt" / "state.pt").is_file()

    # 2. the same command again: finished stages are skipped, training continues from its checkpoint
    summary = json.loads(_invoke(["prepare", "--out", str(work.root), *TINY, "--json"]).splitlines()[-1])
    assert summary["stages"] == {"plan": "skipped", "data": "skipped", "train": "done",
                                 "accuracy": "done", "tune": "done", "register": "done"}
    assert "resumed at step 2" in json.loads(work.stages.read_text())["train"]["detail"]
    assert summary["training"]["steps"] == 6
    assert [row["distance"] for row in summary["accuracy"]] == [2, 3, 4]
    assert all(0 <= row["top1"] <= row["top10"] <= 1 for row in summary["accuracy"])
    assert summary["tree"]["expected_tau"] >= 1 and summary["measured"]["tau"] >= 1
    assert summary["measured"]["speedup"] > 0

    # artifact, accuracy, tree and profile written, and registered in the user cache
    entry = Path(summary["registered"])
    assert entry.parent.parent == cache / "registry"
    for path in (work.accuracy, work.tree, work.profile, entry / "entry.json", entry / "accuracy.json",
                 entry / "trees" / "cpu-bfloat16.json"):
        assert path.is_file(), path
    assert artifact_identity(entry / registry.TOKENS) == artifact_identity(work.tokens)
    assert len(list(profiles_dir().glob("*.json"))) == 1
    prepared_tree = TreeSpec.load(work.tree)
    assert prepared_tree.meta["tuned_for"]["prompt_tokens"] == artifact_identity(work.tokens)

    # 3. a third run does nothing
    again = prepare(config)
    assert set(again.stages.values()) == {"skipped"}

    # 4. `ppd generate --model M` and `load(M)` find the prepared tokens and tree, with no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        out = _invoke(["generate", "--model", MODEL, "--max-new-tokens", "8", "--json", "Write a haiku"])
        engine = load(MODEL)
    assert json.loads(out.splitlines()[-1])["new_tokens"] > 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [w for w in warnings if "untrained" in w or "tune" in w or "default tree" in w], warnings
    assert not [r for r in caplog.records if r.name.startswith("ppdecode") and r.levelno >= logging.WARNING]
    assert engine.prompt_tokens is not None
    assert tokens_identity(engine.prompt_tokens) == artifact_identity(work.tokens)
    assert engine.tree == prepared_tree
    # an explicit --prompt-tokens DIR still works
    explicit = load(MODEL, prompt_tokens=work.tokens)
    assert explicit.prompt_tokens is not None and explicit.tree == prepared_tree

    # 5. without a hardware profile for this exact setup, "auto" takes the registered tree, untuned
    for profile in profiles_dir().glob("*.json"):
        profile.unlink()
    trees = resolve_trees(engine.base, engine.prompt_tokens, "auto", allow_tune=False)
    assert trees[1] == prepared_tree and set(trees) == {1}  # the quick tune chose for one row only
    assert not list(profiles_dir().glob("*.json"))  # nothing was tuned


def test_prepare_for_a_draft_trains_on_its_targets_answers(cache: Path, tmp_path: Path) -> None:
    """`ppd prepare --model DRAFT --writer TARGET`: the target answers the data's prompts (the text a
    draft continues inside speculative decoding) and the draft's prompt tokens train on them."""
    from ppdecode.prepare.stages import WorkDir
    from ppdecode.train.data import load_dataset

    work = WorkDir(tmp_path / "draft")
    args = ["prepare", "--model", "smollm2-135m-draft", "--writer", MODEL, "--out", str(work.root),
            "--no-register", "--json", "--prompts", "8", "--steps", "2", "--max-new-tokens", "24",
            "--max-prompt-tokens", "48", "--time-budget", "3m"]
    summary = json.loads(_invoke(args).splitlines()[-1])
    assert summary["training"]["steps"] == 2 and summary["registered"] is None
    assert summary["data"]["writer"] == MODEL
    header = load_dataset(work.data).header
    assert header["base_model"] == "smollm2-135m-draft" and header["writer"] == MODEL
    assert json.loads(work.stages.read_text())["data"]["settings"]["writer"][0] == MODEL
    config = json.loads((work.tokens / "config.json").read_text())
    assert config["base_model"] == "smollm2-135m-draft" and config["record"]["dataset"]["writer"] == MODEL
