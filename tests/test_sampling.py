"""Lossless sampling: PPD's first generated tokens are distributed exactly as vanilla sampling's.

With top-k = 3 the first three tokens have 27 possible outcomes; their exact probabilities come from
the model directly. A chi-square test compares PPD's samples with them, and the same test rejects a
deliberately biased acceptance rule, so it has the power to catch one.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ppdecode import verify
from ppdecode.config import AcceptMode, GenerationConfig
from ppdecode.engine import Engine
from ppdecode.models import LoadedModel
from ppdecode.prompt_tokens import PromptTokens
from ppdecode.proposers import Proposal, Ranked, RowProposer
from ppdecode.proposers.draft import DraftProposer
from ppdecode.tree.spec import load_tree

from .helpers import ReferenceProposer

TOP_K = 3
TEMPERATURE = 1.0
SAMPLES = 240
PROMPT = "Name a colour."


def exact_distribution(base: LoadedModel, ids: list[int]) -> dict[tuple[int, ...], float]:
    """P(t1, t2, t3) under temperature-1 top-3 sampling, by enumerating the 27 sequences."""

    def step(prefixes: list[list[int]]) -> list[list[tuple[int, float]]]:
        with torch.inference_mode():
            logits = base.model(torch.tensor([ids + p for p in prefixes])).logits[:, -1]
        probs = verify.sampling_probs(logits, TEMPERATURE, TOP_K, 1.0)
        top = probs.topk(TOP_K, dim=-1)
        return [
            list(zip(i.tolist(), v.tolist(), strict=True))
            for i, v in zip(top.indices, top.values, strict=True)
        ]

    dist: dict[tuple[int, ...], float] = {}
    first = step([[]])[0]
    seconds = step([[t1] for t1, _ in first])
    pairs = [((t1, t2), p1 * p2) for (t1, p1), row in zip(first, seconds, strict=True) for t2, p2 in row]
    thirds = step([list(pair) for pair, _ in pairs])
    for (pair, p12), row in zip(pairs, thirds, strict=True):
        for t3, p3 in row:
            dist[(*pair, t3)] = p12 * p3
    return dist


class LikelyProposer(RowProposer):
    """Proposes the model's most likely continuations so that guesses are often accepted and sometimes not."""

    def __init__(self, prompt_length: int, dist: dict[tuple[int, ...], float], continuation: bool) -> None:
        self.prompt_length = prompt_length
        self.dist = dist
        self.continuation = continuation  # also guess past the tree (verified as a lookup chain)

    def propose_row(self, ranked: Ranked | None, history: list[int], reach: int) -> Proposal:
        """Candidates by probability at each depth; the most likely path continues as far as known."""
        depth = len(ranked) if ranked else 0
        top_k = len(ranked[0]) if ranked else 1
        out = torch.arange(top_k).repeat(depth, 1) + 10_000
        prefix = tuple(history[self.prompt_length :])
        ahead: list[int] = []
        for i in range(max(depth, reach)):
            scores: dict[int, float] = {}
            for seq, p in self.dist.items():
                if seq[: len(prefix)] == prefix and len(seq) > len(prefix):
                    scores[seq[len(prefix)]] = scores.get(seq[len(prefix)], 0.0) + p
            best = sorted(scores, key=lambda t: -scores[t])[:top_k]
            if not best:
                break
            if i < depth:
                out[i, : len(best)] = torch.tensor(best)
            ahead.append(best[0])
            prefix = (*prefix, best[0])
        candidates = out.tolist() if ranked else None
        return Proposal(candidates, tuple(ahead) if self.continuation else ())


def chi_square_p_value(
    counts: dict[tuple[int, ...], int], dist: dict[tuple[int, ...], float], n: int
) -> float:
    """Upper tail of the chi-square statistic, cells with expected count < 5 pooled."""
    stat, pooled_observed, pooled_expected, cells = 0.0, 0, 0.0, 0
    for outcome, p in dist.items():
        expected, observed = n * p, counts.get(outcome, 0)
        if expected < 5:
            pooled_observed += observed
            pooled_expected += expected
            continue
        stat += (observed - expected) ** 2 / expected
        cells += 1
    if pooled_expected > 0:
        stat += (pooled_observed - pooled_expected) ** 2 / pooled_expected
        cells += 1
    assert sum(counts.values()) == n and not set(counts) - set(dist), (
        "a sample fell outside the top-k support"
    )
    dof = cells - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2)))


def sample_counts(engine: Engine, ids: list[int]) -> tuple[dict[tuple[int, ...], int], int]:
    """Outcome counts over SAMPLES seeds, and how many guesses were accepted in all."""
    counts: dict[tuple[int, ...], int] = {}
    accepted = 0
    for seed in range(SAMPLES):
        config = GenerationConfig(max_new_tokens=3, temperature=TEMPERATURE, top_k=TOP_K, seed=seed)
        result = engine.generate_ids(ids, config)
        out = tuple(result.token_ids)
        counts[out] = counts.get(out, 0) + 1
        accepted += len(out) - 1 - result.stats.steps  # tokens beyond one per forward (prefill included)
    return counts, accepted


@pytest.fixture(scope="module")
def setup(smollm_f32: LoadedModel) -> tuple[Engine, list[int], dict[tuple[int, ...], float]]:
    vanilla = Engine(smollm_f32)
    ids = vanilla.encode(PROMPT)
    dist = exact_distribution(smollm_f32, ids)
    assert math.isclose(sum(dist.values()), 1.0, rel_tol=1e-4)
    proposer = LikelyProposer(len(ids), dist, continuation=False)
    engine = Engine(smollm_f32, PromptTokens.initial(smollm_f32), load_tree("default"), proposer)
    return engine, ids, dist


def test_lossless_sampling_matches_the_model_distribution(setup) -> None:
    engine, ids, dist = setup
    counts, accepted = sample_counts(engine, ids)
    assert accepted > SAMPLES // 4, "the proposer should make acceptance common, or the test proves little"
    p_value = chi_square_p_value(counts, dist, SAMPLES)
    assert p_value > 0.001, (p_value, counts)


def test_lossless_sampling_through_a_lookup_chain(setup, smollm_f32: LoadedModel) -> None:
    """Guesses that reach past the tree (a lookup chain, here from the first step on) stay exact."""
    _, ids, dist = setup
    proposer = LikelyProposer(len(ids), dist, continuation=True)
    engine = Engine(smollm_f32, PromptTokens.initial(smollm_f32), load_tree("default"), proposer)
    counts, accepted = sample_counts(engine, ids)
    assert accepted > SAMPLES // 2, "the chain's guesses should be accepted often"
    p_value = chi_square_p_value(counts, dist, SAMPLES)
    assert p_value > 0.001, (p_value, counts)


def test_lossless_sampling_with_a_draft_model(setup, smollm_f32: LoadedModel) -> None:
    """A draft model's greedy tokens (here the model drafting for itself, so most are likely) are
    deterministic candidates: verified by the rule of METHOD §3, sampling stays exact."""
    _, ids, dist = setup
    engine = Engine(smollm_f32, draft=DraftProposer(Engine(smollm_f32), length=3, schedule="fixed"))
    counts, accepted = sample_counts(engine, ids)
    assert accepted > SAMPLES // 4, "the draft's tokens should be accepted often, or the test proves little"
    p_value = chi_square_p_value(counts, dist, SAMPLES)
    assert p_value > 0.001, (p_value, counts)


def test_lossless_sampling_with_a_draft_writing_with_ppd(setup, smollm_f32: LoadedModel) -> None:
    """A draft with prompt tokens brings its own tree (what it wrote, then its guesses' top-k past
    that), verified by the rule of METHOD §3 like any tree: sampling stays exact."""
    _, ids, dist = setup
    draft = Engine(smollm_f32, PromptTokens.initial(smollm_f32), load_tree("default"))
    engine = Engine(smollm_f32, draft=DraftProposer(draft, length=3, schedule="fixed"))
    counts, accepted = sample_counts(engine, ids)
    assert accepted > SAMPLES // 4, "the draft's tokens should be accepted often, or the test proves little"
    p_value = chi_square_p_value(counts, dist, SAMPLES)
    assert p_value > 0.001, (p_value, counts)


def test_the_test_rejects_a_biased_acceptance_rule(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, ids, dist = setup

    def biased(logits, tokens, buffers, temperature, top_k, top_p, generator):  # type: ignore[no-untyped-def]
        # accepts the rank-0 chain whenever it has any probability: greedy-like, not lossless
        probs = verify.sampling_probs(logits, temperature, top_k, top_p)
        node, accepted = 0, []
        while buffers.children[node]:
            child = buffers.children[node][0]
            if float(probs[node, tokens[child]]) <= 0:
                break
            accepted.append(child)
            node = child
        bonus = int(torch.multinomial(probs[node].cpu(), 1, generator=generator))
        return verify.Verdict(accepted, [int(tokens[i]) for i in accepted], bonus)

    monkeypatch.setattr("ppdecode.verify.verify_lossless", biased)
    counts, _ = sample_counts(engine, ids)
    assert chi_square_p_value(counts, dist, SAMPLES) < 0.001


@pytest.mark.parametrize(
    ("top_k", "top_p", "support"),
    [(0, 1.0, 6), (2, 1.0, 2), (0, 0.35, 1), (0, 0.5, 2), (0, 0.75, 3), (2, 0.75, 2)],
)
def test_sampling_probs_filtering(top_k: int, top_p: float, support: int) -> None:
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.03, 0.02]]))
    probs = verify.sampling_probs(logits, 1.0, top_k, top_p)
    assert int((probs > 0).sum()) == support
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-6)


def test_all_three_token_sequences_enumerated(setup) -> None:
    _, _, dist = setup
    assert len(dist) == TOP_K**3
    assert all(len(seq) == 3 for seq in itertools.islice(dist, 5))


@pytest.mark.parametrize("accept", [AcceptMode.TYPICAL, AcceptMode.LOSSLESS])
def test_near_zero_temperature_reproduces_greedy(smollm_f32: LoadedModel, accept: AcceptMode) -> None:
    """At temperature → 0 both sampling rules collapse onto greedy decoding (with a trained-like oracle)."""
    vanilla = Engine(smollm_f32)
    ids = vanilla.encode("List three fruits.")
    greedy = vanilla.generate_ids(ids, GenerationConfig(max_new_tokens=32)).token_ids
    proposer = ReferenceProposer(len(ids), greedy, smollm_f32.model.config.vocab_size, right=True)
    engine = Engine(smollm_f32, PromptTokens.initial(smollm_f32), load_tree("default"), proposer)
    config = GenerationConfig(max_new_tokens=32, temperature=1e-3, accept=accept, seed=0)
    result = engine.generate_ids(ids, config)
    assert result.token_ids == greedy
    assert result.stats.tau > 2.0, "the oracle's guesses should be accepted"
