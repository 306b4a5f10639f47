"""Hardware-aware tree choice (METHOD §5): pure choice logic on fake latency profiles, the profile store,
``resolve_tree``'s fallbacks and refusals, the ``build-tree`` command, and one short real-model tune.

Everything but the last test uses tiny stand-ins (a 2×2 linear layer as the "model", zero prompt
tokens) and runs in milliseconds; profiles go to a temporary cache.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner, Result

from ppdecode.models import LoadedModel
from ppdecode.prompt_tokens import PromptTokens, PromptTokensConfig
from ppdecode.tree.builder import Accuracy, build_tree, build_tree_family, expected_tau
from ppdecode.tree.spec import TreeNode, TreeSpec, load_tree
from ppdecode.tune import resolve as resolve_module
from ppdecode.tune.choice import (
    BudgetOption,
    best_few,
    best_predicted,
    choose_confirmed,
    default_budgets,
    latency_sizes,
    parse_budgets,
    predict,
    predict_all,
    step_inputs,
    vanilla_tokens_per_s,
)
from ppdecode.tune.decode import DecodeMeasurement, held_out_prompts
from ppdecode.tune.latency import LatencyProfile, isotonic, probe_tree
from ppdecode.tune.resolve import resolve_tree
from ppdecode.tune.store import (
    BudgetRow,
    HardwareProfile,
    artifact_identity,
    current_key,
    load_profile,
    profile_path,
    save_profile,
    tokens_identity,
)
from ppdecode.tune.tuner import TuneConfig, accuracy_for

# A stand-in for the measured table of the default model (top-10 ≈ 0.71 / 0.52 / 0.44).
ROWS = [
    [0.30, 0.12, 0.07, 0.05, 0.04, 0.035, 0.03, 0.025, 0.02, 0.02],
    [0.15, 0.08, 0.06, 0.05, 0.045, 0.04, 0.035, 0.025, 0.02, 0.015],
    [0.11, 0.07, 0.05, 0.045, 0.04, 0.035, 0.03, 0.025, 0.02, 0.015],
]
ACC = Accuracy.from_dict({"num_prompt_tokens": 3, "top_k": 10, "rank_probs": ROWS})
BUDGETS = [5, 8, 12, 16, 24, 32, 48]
FAMILY = build_tree_family(ACC, BUDGETS)
OPTIONS = [BudgetOption.of(spec) for spec in FAMILY]


def linear_profile(base_ms: float, per_input_ms: float, overhead_ms: float = 0.0) -> LatencyProfile:
    sizes = tuple(range(1, 49))
    latencies = tuple(base_ms + per_input_ms * n for n in sizes)
    return LatencyProfile(sizes, latencies, 256, 1, overhead_ms, overhead_ms)


CPU_LIKE = linear_profile(30.0, 0.6, 2.0)  # every extra input costs ~2% of a forward
GPU_LIKE = linear_profile(20.0, 0.0)  # memory-bound: more inputs are free up to the largest size


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PPDECODE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_base(name: str = "tiny-model", fingerprint: str = "fp-tiny") -> LoadedModel:
    return LoadedModel(name, torch.nn.Linear(2, 2), None, fingerprint, (0,))


def fake_tokens(n: int = 3, fill: float = 0.0, fingerprint: str = "fp-tiny") -> PromptTokens:
    tokens = PromptTokens(PromptTokensConfig(num_prompt_tokens=n, hidden_size=4, num_layers=1,
                                             fingerprint=fingerprint))
    with torch.no_grad():
        tokens.embeddings.fill_(fill)
    return tokens


def fake_profile(
    base: LoadedModel, tokens: PromptTokens, budget: int = 12, **key_changes: Any
) -> HardwareProfile:
    key = current_key(base, tokens)
    key = type(key)(**{**key.to_dict(), **key_changes})
    tree = build_tree(ACC, budget)
    option = BudgetOption.of(tree)
    return HardwareProfile(
        key=key, latency=CPU_LIKE, rows=(BudgetRow(predict(option, CPU_LIKE), option.input_sizes),),
        vanilla=None, predicted_budget=budget, chosen_budget=budget, tree=tree, quick=True,
        accuracy_source="test",
    )


def ship(tree: TreeSpec, tuned_for: dict[str, Any], path: Path) -> None:
    """Save ``tree`` as a device type's shipped tree, tuned for ``tuned_for`` (a hardware key's fields)."""
    replace(tree, meta={**tree.meta, "tuned_for": tuned_for}).save(path)


# ---- latency profile ----------------------------------------------------------------------------


def test_latency_interpolates_and_extends_without_falling() -> None:
    profile = LatencyProfile((1, 4, 8), (10.0, 13.0, 21.0), 256, 3, step_overhead_ms=1.0,
                             vanilla_overhead_ms=0.5)
    assert profile.forward_at(1) == 10.0
    assert profile.forward_at(6) == pytest.approx(17.0)
    assert profile.forward_at(10) == pytest.approx(25.0)  # last slope, 2 ms per input
    assert profile.step_ms(1) == pytest.approx(10.5)
    assert profile.step_ms(8) == pytest.approx(22.0)
    assert LatencyProfile.from_dict(profile.to_dict()) == profile


@pytest.mark.parametrize(
    ("values", "fitted"),
    [
        ((1.0, 2.0, 3.0), (1.0, 2.0, 3.0)),
        ((10.0, 14.0, 13.0), (10.0, 13.5, 13.5)),  # a dip is pooled with its neighbour
        ((41.0, 53.3, 49.4, 52.1), (41.0, 51.35, 51.35, 52.1)),
        ((5.0, 4.0, 3.0), (4.0, 4.0, 4.0)),
    ],
)
def test_latency_is_smoothed_to_never_fall(values: tuple[float, ...], fitted: tuple[float, ...]) -> None:
    assert isotonic(values) == pytest.approx(fitted)
    profile = LatencyProfile(tuple(range(1, len(values) + 1)), values, 256, 1)
    assert profile.smoothed_ms == pytest.approx(fitted)
    assert profile.forward_at(len(values) + 3) >= fitted[-1]  # the tail is never extrapolated down


@pytest.mark.parametrize(
    ("sizes", "ms", "message"),
    [((), (), "at least one"), ((4, 1), (1.0, 2.0), "increasing"), ((1, 2), (1.0, 0.0), "> 0")],
)
def test_latency_profile_rejects_bad_tables(sizes: tuple, ms: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LatencyProfile(sizes, ms, 256, 1)


@pytest.mark.parametrize(("n", "num_prompt_tokens"), [(2, 3), (4, 3), (5, 3), (17, 3), (9, 1)])
def test_probe_tree_has_exactly_n_inputs(n: int, num_prompt_tokens: int) -> None:
    spec, depth = probe_tree(n, num_prompt_tokens)
    assert spec.input_size(depth) == n


# ---- the choice ---------------------------------------------------------------------------------


def test_budget_option_reads_the_builder_meta() -> None:
    option = OPTIONS[BUDGETS.index(16)]
    spec = FAMILY[BUDGETS.index(16)]
    assert option.expected_tau == pytest.approx(expected_tau(ACC, spec), abs=1e-5)
    assert option.input_sizes == tuple(spec.input_size(d) for d in range(4))
    assert max(option.input_sizes) <= 16
    assert sum(option.depth_share) == pytest.approx(1.0)
    # Ensemble members add one input per member and slot.
    assert step_inputs(spec, 3, ensemble=2) == spec.input_size(3) + spec.root_slots + sum(
        node.slots for node in spec.tree(3))


def test_budget_option_needs_a_built_tree() -> None:
    handmade = TreeSpec(3, (2, 1, 1), ((TreeNode((0,), 0),),) * 3)
    with pytest.raises(ValueError, match="ppd build-tree"):
        BudgetOption.of(handmade)


def test_prediction_is_tau_over_expected_step_time() -> None:
    option = OPTIONS[BUDGETS.index(12)]
    p = predict(option, CPU_LIKE)
    shares = zip(option.depth_share, option.input_sizes, strict=True)
    step = sum(share * (30 + 0.6 * n + 2.0) for share, n in shares)
    assert p.step_ms == pytest.approx(step)
    assert p.tokens_per_s == pytest.approx(1000 * option.expected_tau / step)
    assert p.speedup == pytest.approx(p.tokens_per_s / vanilla_tokens_per_s(CPU_LIKE))
    assert vanilla_tokens_per_s(CPU_LIKE) == pytest.approx(1000 / (30 + 0.6 + 2.0))


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (GPU_LIKE, 48),  # flat latency: the biggest tree wins (τ grows with the budget)
        (linear_profile(30.0, 0.3, 2.0), 16),
        (linear_profile(30.0, 0.6, 2.0), 12),  # CPU: a small tree
        (linear_profile(30.0, 1.5, 2.0), 8),
        (linear_profile(30.0, 6.0), 5),  # steep: the smallest tree
    ],
)
def test_choice_follows_the_latency_curve(profile: LatencyProfile, expected: int) -> None:
    predictions = predict_all(OPTIONS, profile)
    assert best_predicted(predictions).budget == expected
    assert best_few(predictions, 2)[0] == expected


def tile_profile(chain_share: float = 0.0, chain_inputs: int = 0) -> LatencyProfile:
    """A matrix unit's tiles of 16 rows: up to 16 inputs cost what one does, the 17th a tile more."""
    sizes = tuple(range(1, 65))
    latencies = tuple(40.0 + 15.0 * ((n - 1) // 16) for n in sizes)
    return LatencyProfile(sizes, latencies, 256, 1, chain_share=chain_share, chain_inputs=chain_inputs)


def test_a_chain_past_the_tree_is_priced_at_the_step_it_fills() -> None:
    option = OPTIONS[BUDGETS.index(16)]
    plain = predict(option, tile_profile())
    assert plain.step_ms == pytest.approx(40.0)  # every step of the 16-input tree fits one tile
    chained = predict(option, tile_profile(chain_share=0.25, chain_inputs=4))
    # a quarter of the steps carry 4 copied tokens past the largest step: 20 inputs, two tiles
    assert chained.step_ms == pytest.approx(0.75 * 40.0 + 0.25 * 55.0)
    assert chained.expected_tau == plain.expected_tau
    profile = tile_profile(chain_share=0.25, chain_inputs=4)
    assert LatencyProfile.from_dict(profile.to_dict()) == profile
    with pytest.raises(ValueError, match="chain_share"):
        tile_profile(chain_share=1.5)


@pytest.mark.parametrize(
    ("chain_share", "expected"),
    [
        (0.0, 16),  # no chains: the largest tree that fits one tile
        (0.3, 12),  # chains add 4 inputs: the largest tree whose chained step still fits the tile
    ],
)
def test_the_choice_leaves_room_for_the_chain(chain_share: float, expected: int) -> None:
    budgets = list(range(5, 17))
    options = [BudgetOption.of(spec) for spec in build_tree_family(ACC, budgets)]
    predictions = predict_all(options, tile_profile(chain_share, chain_inputs=4))
    assert best_predicted(predictions).budget == expected


def test_expected_tau_grows_with_budget() -> None:
    taus = [option.expected_tau for option in OPTIONS]
    assert taus == sorted(taus)


@pytest.mark.parametrize(
    ("predicted", "measured", "chosen"),
    [
        (12, {}, 12),  # nothing confirmed: keep the prediction
        (12, {12: 100.0, 16: 101.5}, 12),  # within the 2% noise tolerance: keep the prediction
        (12, {12: 100.0, 16: 104.0}, 16),  # clearly faster: the measurement wins
        (12, {8: 90.0, 16: 95.0}, 16),  # the prediction was not confirmed: the fastest measured
    ],
)
def test_choose_confirmed(predicted: int, measured: dict[int, float], chosen: int) -> None:
    assert choose_confirmed(predicted, measured) == chosen


@pytest.mark.parametrize(
    ("text", "budgets"),
    [("16", [16]), ("8,12,16", [8, 12, 16]), ("8:16:4", [8, 12, 16]), ("5:7", [5, 6, 7]),
     ("5:7,20:28:4, 6", [5, 6, 7, 20, 24, 28])],
)
def test_parse_budgets(text: str, budgets: list[int]) -> None:
    assert parse_budgets(text, 3) == budgets


@pytest.mark.parametrize(
    ("text", "message"),
    [("4", "too small.*>= 5"), ("2:10", "too small"), ("abc", "cannot read"), ("16:8", "cannot read"),
     ("1:2:3:4", "cannot read"), ("8:16:0", "cannot read")],
)
def test_parse_budgets_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_budgets(text, 3)


def test_sizes_to_profile() -> None:
    full = latency_sizes(OPTIONS, quick=False)
    assert full[0] == 1 and set(full) >= {n for option in OPTIONS for n in option.input_sizes}
    quick = latency_sizes(OPTIONS, quick=True)
    assert quick[0] == 1 and quick[-1] == max(full) and len(quick) <= 9
    # a step with a chain past the largest tree step is profiled too
    chained = latency_sizes(OPTIONS, quick=False, chain_inputs=4)
    assert set(chained) - set(full) == {max(option.input_sizes) + 4 for option in OPTIONS} - set(full)
    assert max(chained) == max(full) + 4
    assert default_budgets("cpu", 3)[0] == 5 and default_budgets("cpu", 3)[-1] == 48
    assert max(default_budgets("cuda", 3)) > 200


def test_decode_measurement_sums_and_rates() -> None:
    a = DecodeMeasurement(steps=10, committed=17, tokens=16, decode_s=0.5, forward_s=0.45)
    b = DecodeMeasurement(steps=10, committed=15, tokens=15, decode_s=0.5, forward_s=0.45)
    total = a + b
    assert total.tau == pytest.approx(1.6)
    assert total.ms_per_step == pytest.approx(50.0)
    assert total.tokens_per_s == pytest.approx(31.0)
    assert total.overhead_ms_per_step == pytest.approx(5.0)
    assert DecodeMeasurement.from_dict(total.to_dict()) == total
    chained = DecodeMeasurement(10, 17, 16, 0.5, 0.45, chain_steps=3)
    assert (chained + a).chain_share == pytest.approx(0.15)
    assert DecodeMeasurement.from_dict(chained.to_dict()) == chained
    assert len(held_out_prompts(6)) == 6
    with pytest.raises(ValueError, match="held-out prompts"):
        held_out_prompts(0)


# ---- identities and the profile store -----------------------------------------------------------


def test_tokens_identity_is_the_artifacts(tmp_path: Path) -> None:
    tokens = fake_tokens(fill=0.25)
    tokens.save(tmp_path / "tokens")
    assert artifact_identity(tmp_path / "tokens") == tokens_identity(tokens)
    assert tokens_identity(fake_tokens(fill=0.5)) != tokens_identity(tokens)
    assert artifact_identity(tmp_path / "missing") is None


def test_profile_round_trip_and_refusal_of_another_device(cache: Path) -> None:
    base, tokens = fake_base(), fake_tokens()
    profile = fake_profile(base, tokens)
    path = save_profile(profile)
    assert path == profile_path(current_key(base, tokens)) and path.is_relative_to(cache)
    loaded = HardwareProfile.read(path)
    assert loaded.to_dict() == profile.to_dict()
    assert load_profile(current_key(base, tokens)) is not None
    elsewhere = fake_profile(base, tokens, device_name="Some Other CPU", threads=64)
    with pytest.raises(ValueError, match="device_name 'Some Other CPU' \\(profile\\).*threads 64"):
        elsewhere.check(current_key(base, tokens))


@pytest.mark.parametrize("change", [{"device_name": "Other CPU"}, {"dtype": "float16"}, {"threads": 99},
                                    {"prompt_tokens": "0123456789abcdef"}])
def test_a_profile_from_elsewhere_in_the_store_is_ignored(
    cache: Path, change: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    base, tokens = fake_base(), fake_tokens()
    key = current_key(base, tokens)
    save_profile(fake_profile(base, tokens, **change), profile_path(key))  # e.g. copied from another machine
    with caplog.at_level(logging.WARNING):
        assert load_profile(key) is None
    assert "tuned elsewhere" in caplog.text


def test_a_corrupt_profile_is_ignored(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    base, tokens = fake_base(), fake_tokens()
    key = current_key(base, tokens)
    profile_path(key).parent.mkdir(parents=True)
    profile_path(key).write_text('{"kind": "ppdecode-hardware-profile", "version": 1, "key": {}}')
    with caplog.at_level(logging.WARNING):
        assert load_profile(key) is None
    assert "corrupt" in caplog.text


# ---- resolve_tree -------------------------------------------------------------------------------


@pytest.fixture()
def no_shipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Shipped trees come from a temporary folder (empty unless a test writes one)."""
    folder = tmp_path / "shipped"
    folder.mkdir()
    monkeypatch.setattr(
        resolve_module, "shipped_tree_path", lambda model, kind: folder / f"{model}-{kind}.json"
    )
    return folder


def test_auto_uses_the_stored_profile(cache: Path, no_shipped: Path) -> None:
    base, tokens = fake_base(), fake_tokens()
    profile = fake_profile(base, tokens, budget=16)
    save_profile(profile)
    assert resolve_tree(base, tokens, "auto", allow_tune=False) == profile.tree


def test_auto_never_uses_a_profile_from_elsewhere(
    cache: Path, no_shipped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, tokens = fake_base(), fake_tokens()
    key = current_key(base, tokens)
    save_profile(fake_profile(base, tokens, budget=40, device_name="Other CPU"), profile_path(key))
    # Without tuning: the default tree, not the foreign profile's.
    assert resolve_tree(base, tokens, "auto", allow_tune=False) == load_tree("default")
    # With tuning: a re-tune, stored under this key, then reused.
    calls: list[TuneConfig] = []

    def fake_tune(base_: LoadedModel, tokens_: PromptTokens, acc: Accuracy, config: TuneConfig,
                  key_: object) -> HardwareProfile:
        calls.append(config)
        return fake_profile(base_, tokens_, budget=8)

    monkeypatch.setattr(resolve_module, "tune", fake_tune)
    tuned = resolve_tree(base, tokens, "auto", accuracy=ACC)
    assert tuned.meta["budget"] == 8 and len(calls) == 1 and calls[0].quick
    assert resolve_tree(base, tokens, "auto") == tuned and len(calls) == 1  # now from the store


def test_auto_uses_a_shipped_tree_only_for_the_tokens_it_was_tuned_with(
    cache: Path, no_shipped: Path
) -> None:
    base, tokens = fake_base(), fake_tokens()
    key = current_key(base, tokens)
    tree = build_tree(ACC, 20)
    ship(tree, key.to_dict(), no_shipped / f"{base.name}-cpu.json")
    assert resolve_tree(base, tokens, "auto", allow_tune=False).meta["budget"] == 20
    other_tokens = fake_tokens(fill=1.0)
    assert resolve_tree(base, other_tokens, "auto", allow_tune=False) == load_tree("default")


def test_auto_without_an_accuracy_table_falls_back_or_refuses(cache: Path, no_shipped: Path) -> None:
    base = fake_base()
    assert resolve_tree(base, fake_tokens(3), "auto") == load_tree("default")
    with pytest.raises(ValueError, match="no tree fits 2 prompt tokens"):
        resolve_tree(base, fake_tokens(2), "auto")
    assert resolve_tree(base, None, "auto") == load_tree("default")  # vanilla: no tree is used


def test_explicit_trees_are_checked_against_the_prompt_tokens(tmp_path: Path, cache: Path) -> None:
    base = fake_base()
    assert resolve_tree(base, fake_tokens(3), "default") == load_tree("default")
    with pytest.raises(ValueError, match="built for 3 prompt tokens, but the prompt tokens have 2"):
        resolve_tree(base, fake_tokens(2), "default")
    two = Accuracy.from_dict({"num_prompt_tokens": 2, "top_k": 3, "rank_probs": [[0.3, 0.1, 0.1]] * 2})
    path = tmp_path / "two.json"
    build_tree(two, 8).save(path)
    assert resolve_tree(base, fake_tokens(2), path).num_prompt_tokens == 2
    with pytest.raises(ValueError, match="built for 2 prompt tokens"):
        resolve_tree(base, fake_tokens(3), str(path))


def test_an_explicit_profile_from_another_device_is_refused(tmp_path: Path, cache: Path) -> None:
    base, tokens = fake_base(), fake_tokens()
    path = save_profile(fake_profile(base, tokens, device_name="NVIDIA H100"), tmp_path / "profile.json")
    with pytest.raises(ValueError, match="tuned elsewhere: device_name 'NVIDIA H100'"):
        resolve_tree(base, tokens, path)
    here = save_profile(fake_profile(base, tokens, budget=16), tmp_path / "here.json")
    assert resolve_tree(base, tokens, here).meta["budget"] == 16


# ---- accuracy tables ----------------------------------------------------------------------------


def test_accuracy_for_refuses_a_table_for_another_n(tmp_path: Path) -> None:
    path = tmp_path / "acc.json"
    path.write_text(json.dumps({"num_prompt_tokens": 2, "top_k": 2, "rank_probs": [[0.3, 0.1], [0.2, 0.1]]}))
    with pytest.raises(ValueError, match="measured for 2 prompt tokens.*requested for 3"):
        accuracy_for(fake_base(), fake_tokens(3), path)
    assert accuracy_for(fake_base(), fake_tokens(2), path) is not None


def test_accuracy_for_uses_the_tokens_record() -> None:
    tokens = fake_tokens()
    tokens.config.record["accuracy"] = {"num_prompt_tokens": 3, "top_k": 10, "rank_probs": ROWS}
    found = accuracy_for(fake_base(), tokens)
    assert found is not None and found.rank_probs == ACC.rank_probs
    assert accuracy_for(fake_base(), fake_tokens()) is None
    # `ppd train` records the cumulative top-k accuracy: exact-rank probabilities are its differences.
    cumulative = [[sum(row[: r + 1]) for r in range(len(row))] for row in ROWS]
    tokens.config.record["accuracy"] = {"num_samples": 100, "topk_accuracy": cumulative}
    found = accuracy_for(fake_base(), tokens)
    assert found is not None
    assert [list(row) for row in found.rank_probs] == [pytest.approx(row) for row in ROWS]


# ---- the build-tree command ---------------------------------------------------------------------


def run_cli(*args: str) -> Result:
    from ppdecode.cli import app

    return CliRunner().invoke(app, list(args))


def write_accuracy(path: Path, rows: list[list[float]]) -> Path:
    path.write_text(json.dumps({"num_prompt_tokens": len(rows), "top_k": len(rows[0]), "rank_probs": rows}))
    return path


def test_build_tree_one_budget(tmp_path: Path) -> None:
    acc = write_accuracy(tmp_path / "acc.json", ROWS)
    out = str(tmp_path / "t.json")
    result = run_cli("build-tree", "--accuracy", str(acc), "--budget", "16", "--out", out)
    assert result.exit_code == 0, result.output
    spec = load_tree(tmp_path / "t.json")
    assert spec.meta["budget"] == 16 and max(spec.input_size(d) for d in range(4)) <= 16


def test_build_tree_family(tmp_path: Path) -> None:
    acc = write_accuracy(tmp_path / "acc.json", ROWS)
    out = str(tmp_path / "f.json")
    result = run_cli("build-tree", "--accuracy", str(acc), "--budget", "8:16:4", "--out", out)
    assert result.exit_code == 0, result.output
    taus = [load_tree(tmp_path / f"f-{b}.json").meta["expected_tau"] for b in (8, 12, 16)]
    assert taus == sorted(taus)
    assert "expected τ" in result.output
    result = run_cli("build-tree", "--accuracy", str(acc), "--budget", "8,12", "--out", str(tmp_path / "dir"))
    assert result.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["budget-12.json", "budget-8.json"]


@pytest.mark.parametrize(
    ("rows", "args", "message"),
    [
        ([[0.5, 0.7]] * 3, (), "sums to 1.2"),  # cumulative top-k values, not probabilities
        ([[0.5, -0.1]] * 3, (), "outside \\[0, 1\\]"),
        (ROWS, ("--num-prompt-tokens", "4"), "measured for 3 prompt tokens"),
        (ROWS, ("--budget", "4"), "budget 4 is too small"),
    ],
)
def test_build_tree_refuses_bad_input(tmp_path: Path, rows: list[list[float]], args: tuple[str, ...],
                                      message: str) -> None:
    acc = write_accuracy(tmp_path / "acc.json", rows)
    budget = () if "--budget" in args else ("--budget", "12")
    result = run_cli("build-tree", "--accuracy", str(acc), "--out", str(tmp_path / "t.json"), *budget, *args)
    error = result.exception
    assert isinstance(error, ValueError) and re.search(message, str(error)), error
    assert not (tmp_path / "t.json").exists()


# ---- one short run on the real model ------------------------------------------------------------


@pytest.mark.slow
def test_quick_tune_on_the_default_model(cache: Path, no_shipped: Path) -> None:
    from ppdecode import load_model
    from ppdecode.prompt_tokens import default_prompt_tokens
    from ppdecode.tune.tuner import tune

    models = Path.home() / ".cache" / "ppdecode"
    if not (models / "models" / "smollm2-135m-instruct").is_dir():
        pytest.skip("the default model is not converted in the user cache")
    os.environ["PPDECODE_CACHE"] = str(models)  # the model comes from the user cache ...
    base = load_model(dtype="bfloat16")
    os.environ["PPDECODE_CACHE"] = str(cache)  # ... and the profile goes to the temporary one
    tokens = default_prompt_tokens(base)
    config = TuneConfig.quick_preset(budgets=(5, 8), repeats=1, overhead_tokens=4, confirm=1, prompts=1,
                                     max_new_tokens=6, progress=False, batch_sizes=(1, 2))
    profile = tune(base, tokens, ACC, config)
    assert profile.key == current_key(base, tokens)
    assert [row.budget for row in profile.rows] == [5, 8]
    assert profile.latency.sizes[0] == 1 and all(ms > 0 for ms in profile.latency.forward_ms)
    assert profile.chosen_budget in (5, 8) and profile.vanilla is not None
    assert profile.tree.meta["tuned_for"]["prompt_tokens"] == tokens_identity(tokens)
    assert [choice.batch for choice in profile.batch] == [2]
    # two rows are profiled for the budgets up to one row's choice, and take no larger tree
    two = profile.batch[0]
    assert set(two.latency.sizes) <= set(profile.latency.sizes) and two.budget in (0, 5, 8)
    assert two.budget <= profile.chosen_budget
    save_profile(profile)
    assert resolve_tree(base, tokens, "auto", allow_tune=False) == profile.tree


# ---- batch sizes and dtypes ---------------------------------------------------------------------


def test_the_tree_shrinks_then_turns_off_as_the_forward_turns_compute_bound() -> None:
    from ppdecode.tune.tuner import choose_for_batch

    light = choose_for_batch(2, OPTIONS, FAMILY, linear_profile(20.0, 0.1))  # inputs nearly free
    heavy = choose_for_batch(4, OPTIONS, FAMILY, linear_profile(30.0, 0.6))  # dearer inputs
    marginal = choose_for_batch(4, OPTIONS, FAMILY, linear_profile(30.0, 1.2))  # predicted 1.12x
    assert marginal.tree is not None and 1.10 < marginal.speedup < 1.15
    off = choose_for_batch(16, OPTIONS, FAMILY, linear_profile(30.0, 30.0))  # each input a forward
    close = choose_for_batch(8, OPTIONS, FAMILY, linear_profile(30.0, 1.6))  # a few percent: not enough
    assert close.tree is None and 1.0 < close.speedup <= 1.10
    assert light.tree is not None and heavy.tree is not None and light.budget > heavy.budget
    assert off.tree is None and off.budget == 0 and off.speedup <= 1.0


def test_batch_choices_round_trip_and_reach_the_engine(cache: Path, no_shipped: Path) -> None:
    from ppdecode.tune.resolve import resolve_trees
    from ppdecode.tune.store import BatchChoice

    base, tokens = fake_base(), fake_tokens()
    profile = fake_profile(base, tokens, budget=16)
    small = build_tree(ACC, 5)
    profile = HardwareProfile(**{
        **{f: getattr(profile, f) for f in profile.__dataclass_fields__},
        "batch": (BatchChoice(4, CPU_LIKE, 5, 1.1, small), BatchChoice(8, CPU_LIKE, 0, 0.9, None)),
    })
    save_profile(profile)
    loaded = load_profile(current_key(base, tokens))
    assert loaded is not None and loaded.trees() == profile.trees()
    assert [(c.batch, c.budget) for c in loaded.batch] == [(4, 5), (8, 0)]
    assert resolve_trees(base, tokens, "auto", allow_tune=False) == {1: profile.tree, 4: small, 8: None}
    # shipped as a device type's tree, the batch choices travel in the tree's meta
    ship(profile.exported_tree(), current_key(base, tokens).to_dict(), no_shipped / f"{base.name}-cpu.json")
    profile_path(current_key(base, tokens)).unlink()
    assert resolve_trees(base, tokens, "auto", allow_tune=False) == {1: profile.tree, 4: small, 8: None}


def test_a_shipped_tree_is_not_used_for_another_dtype(cache: Path, no_shipped: Path) -> None:
    base, tokens = fake_base(), fake_tokens()
    key = current_key(base, tokens)
    tree = build_tree(ACC, 20)
    other = {**key.to_dict(), "dtype": "bfloat16" if key.dtype != "bfloat16" else "float32"}
    ship(tree, other, no_shipped / f"{base.name}-cpu.json")
    assert resolve_tree(base, tokens, "auto", allow_tune=False) == load_tree("default")


def test_a_shipped_tree_is_used_only_with_the_kernels_and_instruction_set_it_was_tuned_on(
    cache: Path, no_shipped: Path
) -> None:
    # One CPU model name ("AMD EPYC") covers CPUs with AVX-512 BF16 and CPUs with AVX2 alone, where bf16
    # cannot be packed and a step of n inputs costs n forwards: a tree tuned on one misleads on the other.
    base, tokens = fake_base(), fake_tokens()
    key = current_key(base, tokens)
    tree = build_tree(ACC, 20)
    path = no_shipped / f"{base.name}-cpu.json"

    def resolved(**tuned: Any) -> TreeSpec:
        ship(tree, {k: v for k, v in {**key.to_dict(), **tuned}.items() if v is not None}, path)
        return resolve_tree(base, tokens, "auto", allow_tune=False)

    assert key.kernels == "stock" and key.isa  # a 2x2 linear layer is not packed
    assert resolved().meta["budget"] == 20
    assert resolved(kernels="packed+grouped-attention") == load_tree("default")
    assert resolved(isa=f"not {key.isa}") == load_tree("default")
    # a tree recorded before kernels and instruction sets were: tuned on the stock kernels, on any CPU
    assert resolved(kernels=None, isa=None).meta["budget"] == 20


def test_a_profile_from_a_cpu_with_other_instruction_sets_is_ignored(cache: Path) -> None:
    base, tokens = fake_base(), fake_tokens()
    key = current_key(base, tokens)
    save_profile(fake_profile(base, tokens, isa="other"), profile_path(key))
    assert load_profile(key) is None
    with pytest.raises(ValueError, match="isa 'other' \\(profile\\)"):
        fake_profile(base, tokens, isa="other").check(key)


def measure_as(monkeypatch: pytest.MonkeyPatch, forward_ms: Callable[[int, int], float]) -> list[int]:
    """Stand-ins for the tuner's measurements: a forward of B rows × n inputs takes forward_ms(B, n), and
    decoding measures every variant alike. Returns the batch sizes profiled, in order."""
    from ppdecode.tune import tuner

    profiled: list[int] = []

    def latency(base: LoadedModel, tokens: object, sizes: list[int], *args: object) -> dict[int, float]:
        batch = int(str(args[-1])) if len(args) == 5 else 1  # (..., progress, batch) for a batch
        profiled.append(batch)
        return {n: forward_ms(batch, n) for n in sizes}

    def decoding(base: LoadedModel, tokens: object, variants: dict[str, object], *args: object,
                 **kwargs: object) -> dict[str, DecodeMeasurement]:
        return {name: DecodeMeasurement(10, 10, 10, 0.5, 0.49) for name in variants}

    monkeypatch.setattr(tuner, "measure_forward_latency", latency)
    monkeypatch.setattr(tuner, "measure_decoding", decoding)
    return profiled


def test_where_no_tree_pays_for_one_row_the_engine_decodes_vanilla(
    cache: Path, no_shipped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A device where every further input costs a whole forward (bf16 on a CPU with AVX2 alone):
    # the tuner turns the tree off for one row too, and says so wherever the choice travels.
    from ppdecode.tune import tuner
    from ppdecode.tune.resolve import resolve_trees

    measure_as(monkeypatch, lambda batch, n: 50.0 * n * batch)
    base, tokens = fake_base(), fake_tokens()
    config = TuneConfig.quick_preset(budgets=(5, 8, 12), progress=False, batch_sizes=(1, 4))
    lines: list[str] = []
    profile = tuner.tune(base, tokens, ACC, config, log=lines.append)
    assert not profile.tree_pays and profile.trees() == {1: None}  # and so for every batch size
    assert not profile.batch  # not profiled: each input of a batch costs at least as much
    assert any(line.startswith("one row: vanilla, no tree pays") for line in lines)
    save_profile(profile)
    stored = load_profile(current_key(base, tokens))
    assert stored is not None and not stored.tree_pays and stored.tree == profile.tree
    assert resolve_trees(base, tokens, "auto", allow_tune=False) == {1: None}
    # shipped as a device type's tree, the choice for one row travels in its batch choices
    shipped = profile.exported_tree()
    assert shipped.meta["batch"] == {"1": None}
    shipped.save(no_shipped / f"{base.name}-cpu.json")
    profile_path(current_key(base, tokens)).unlink()
    assert resolve_trees(base, tokens, "auto", allow_tune=False) == {1: None}
    # where inputs are nearly free, the same tune keeps the tree
    measure_as(monkeypatch, lambda batch, n: 20.0 + 0.1 * n)
    assert tuner.tune(base, tokens, ACC, config).tree_pays


def test_an_engine_whose_tree_is_off_for_one_row_decodes_as_vanilla(smollm_f32: LoadedModel) -> None:
    from ppdecode.config import GenerationConfig
    from ppdecode.engine import Engine
    from ppdecode.prompt_tokens import default_prompt_tokens

    tokens = default_prompt_tokens(smollm_f32)
    config = GenerationConfig(max_new_tokens=12)
    prompt = "Name three rivers of Europe."
    off = Engine(smollm_f32, tokens, {1: None}).generate(prompt, config)
    vanilla = Engine(smollm_f32).generate(prompt, config)
    assert off.token_ids == vanilla.token_ids
    # one token a step after the prefill's: no guesses were fed
    assert off.stats.steps == vanilla.stats.steps == len(off.token_ids) - 1


def test_a_batch_takes_no_larger_tree_than_a_smaller_batch(
    cache: Path, no_shipped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A noisy profile of two rows that makes inputs look free must not give two rows a larger tree than
    # one row has; once a batch size decodes vanilla, larger ones are not profiled and decode vanilla too.
    from ppdecode.tune import tuner

    per_input = {1: 0.6, 2: 0.0, 4: 30.0, 8: 0.0}
    profiled = measure_as(monkeypatch, lambda batch, n: 30.0 + per_input[batch] * n)
    base, tokens = fake_base(), fake_tokens()
    config = TuneConfig.quick_preset(budgets=tuple(BUDGETS), progress=False, batch_sizes=(1, 2, 4, 8))
    profile = tuner.tune(base, tokens, ACC, config)
    assert profile.chosen_budget < max(BUDGETS)  # one row: inputs cost, a mid-size tree
    two, four = profile.batch
    assert two.budget == profile.chosen_budget  # free inputs at B = 2, but no larger than for one row
    assert four.tree is None and profiled == [1, 2, 4]  # B = 8 is not profiled
    assert profile.trees() == {1: profile.tree, 2: two.tree, 4: None}
