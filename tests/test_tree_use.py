"""A row rests its tree where the prompt tokens' guesses do not pay for their inputs (planner.TreeUse)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from ppdecode.config import GenerationConfig
from ppdecode.engine import Engine
from ppdecode.models import LoadedModel
from ppdecode.planner import FIRST_REST, TreeUse
from ppdecode.prompt_tokens import default_prompt_tokens
from ppdecode.proposers import Proposal, RowContext
from ppdecode.tree.spec import TreeSpec, load_tree
from ppdecode.tune.choice import BudgetOption

from .helpers import PROMPTS, ReferenceProposer
from .test_lossless import LONG_COPY
from .test_tune import CPU_LIKE, GPU_LIKE, fake_base, fake_profile, fake_tokens

NEW_TOKENS = 48


def resting_steps(use: TreeUse, ratio: float | None, steps: Sequence[tuple[int, int]]) -> list[bool]:
    """Whether each step ran resting, given what each step that carried guesses earned."""
    seen = []
    for gain, tokens in steps:
        seen.append(use.resting)
        use.after_step(ratio, not use.resting, 0 if use.resting else gain, 1 if use.resting else tokens)
    return seen


def test_a_tree_without_a_known_cost_is_always_used() -> None:
    assert not any(resting_steps(TreeUse(0.6, 1.6), None, [(0, 1)] * 40))


def test_guesses_that_earn_their_cost_keep_the_tree() -> None:
    # one accepted guess in three steps: 4/3 tokens per step against 1 without, above a ratio of 1.2
    assert not any(resting_steps(TreeUse(0.6, 1.6), 1.2, [(1, 2), (0, 1), (0, 1)] * 20))


def test_guesses_never_accepted_rest_the_tree_longer_each_time() -> None:
    seen = resting_steps(TreeUse(0.6, 1.6), 1.2, [(0, 1)] * 60)
    first = seen.index(True)
    assert 5 < first < 25  # a run of failures first: a few unlucky steps do not rest the tree
    # rests of 4, 8, 16 ... steps, each followed by one step that tries the tree again
    runs, count = [], 0
    for resting in seen[first:]:
        if resting:
            count += 1
        elif count:
            runs.append(count)
            count = 0
    assert runs[:3] == [FIRST_REST, 2 * FIRST_REST, 4 * FIRST_REST]


def test_a_tree_that_pays_again_ends_the_backoff() -> None:
    use = TreeUse(0.6, 1.6)
    resting_steps(use, 1.2, [(0, 1)] * 30)
    assert use.next_rest > FIRST_REST
    while use.resting:
        use.after_step(1.2, False, 0, 1)
    for _ in range(3):
        use.after_step(1.2, True, 3, 4)  # the text turns predictable
    assert use.pays(1.2) and not use.resting and use.next_rest == FIRST_REST


@pytest.mark.parametrize(
    ("tokens", "gain", "ratio", "pays"),
    [(2.0, 0.5, 1.2, True), (2.0, 0.5, 1.4, False), (1.0, 0.0, 1.01, False), (1.0, 0.0, 1.0, True)],
)
def test_the_tree_pays_when_its_tokens_outgrow_its_cost(
    tokens: float, gain: float, ratio: float, pays: bool
) -> None:
    assert TreeUse(gain, tokens).pays(ratio) is pays


def test_a_profile_gives_its_trees_their_cost_over_a_root_only_step() -> None:
    base, tokens = fake_base(), fake_tokens()
    for latency in (CPU_LIKE, GPU_LIKE):
        profile = replace(fake_profile(base, tokens, budget=12), latency=latency)
        tree = profile.trees()[1]
        assert tree is not None
        option = BudgetOption.of(profile.tree)
        expected = latency.tree_step_ms(option.input_sizes, option.depth_share) / latency.step_ms(1)
        assert tree.meta["step_ratio"] == pytest.approx(expected, abs=1e-3)
    assert GPU_LIKE.tree_step_ms(option.input_sizes, option.depth_share) == GPU_LIKE.step_ms(1)
    assert profile.tree == tree  # the same tree, priced


# ---- on the real model (float32: every output must equal vanilla's) -----------------------------


def priced(ratio: float | None) -> TreeSpec:
    tree = load_tree("default")
    meta = {k: v for k, v in tree.meta.items() if k != "step_ratio"}
    return replace(tree, meta=meta if ratio is None else {**meta, "step_ratio": ratio})


@pytest.fixture(scope="module")
def vanilla(smollm_f32: LoadedModel) -> Engine:
    return Engine(smollm_f32)


@pytest.mark.parametrize(
    ("right", "ratio", "rests"), [(False, 1.2, True), (True, 1.2, False), (False, None, False)]
)
def test_a_row_rests_its_tree_only_where_the_guesses_fail_and_stays_lossless(
    smollm_f32: LoadedModel, vanilla: Engine, right: bool, ratio: float | None, rests: bool
) -> None:
    ids = vanilla.encode(PROMPTS[1])
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    reference = vanilla.generate_ids(ids, config).token_ids
    proposer = ReferenceProposer(len(ids), reference, smollm_f32.model.config.vocab_size, right=right)
    engine = Engine(smollm_f32, default_prompt_tokens(smollm_f32), priced(ratio), proposer=proposer)
    got = engine.generate_ids(ids, config)
    assert got.token_ids == reference
    assert (got.stats.rest_steps > NEW_TOKENS // 2) is rests, got.stats.rest_steps
    assert (got.stats.rest_steps > 0) is rests


class ByPrompt:
    """One ReferenceProposer per prompt of a batch, found by the row's history."""

    def __init__(self, proposers: dict[tuple[int, ...], ReferenceProposer]) -> None:
        self.proposers = proposers

    def _of(self, history: list[int]) -> ReferenceProposer:
        return next(p for prompt, p in self.proposers.items() if tuple(history[: len(prompt)]) == prompt)

    def propose(self, rows: Sequence[RowContext]) -> list[Proposal]:
        return [self._of(r.history).propose_row(r.ranked, r.history, r.reach) for r in rows]

    def accepted(self, request_id: str, history: list[int], accepted: int) -> None:
        return None

    def reset(self, request_id: str) -> None:
        return None


def test_in_a_batch_only_the_rows_whose_guesses_fail_rest(smollm_f32: LoadedModel, vanilla: Engine) -> None:
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    prompts = [vanilla.encode(p) for p in PROMPTS[2:5]]
    references = [r.token_ids for r in vanilla.generate_batch_ids(prompts, config)]
    vocab = smollm_f32.model.config.vocab_size
    rights = [True, False, False]
    proposer = ByPrompt({
        tuple(ids): ReferenceProposer(len(ids), ref, vocab, right=right)
        for ids, ref, right in zip(prompts, references, rights, strict=True)
    })
    engine = Engine(smollm_f32, default_prompt_tokens(smollm_f32), priced(1.2), proposer=proposer)  # type: ignore[arg-type]
    got = engine.generate_batch_ids(prompts, config)
    assert [r.token_ids for r in got] == references
    assert [r.stats.rest_steps > 0 for r in got] == [not right for right in rights]


def test_a_resting_row_still_verifies_its_copies_as_a_chain(smollm_f32: LoadedModel, vanilla: Engine) -> None:
    """A tree too dear to pay here rests; prompt lookup's copies are still verified, many per step."""
    ids = vanilla.encode(LONG_COPY)
    config = GenerationConfig(max_new_tokens=96)
    expected = vanilla.generate_ids(ids, config).token_ids
    got = Engine(smollm_f32, default_prompt_tokens(smollm_f32), priced(50.0)).generate_ids(ids, config)
    assert got.token_ids == expected
    assert got.stats.rest_steps > 0 and got.stats.chain_steps > 0
    assert max(got.stats.accept_lengths) > 10, got.stats.accept_lengths
