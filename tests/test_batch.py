"""Batched decoding: every row of a batch equals its prompt decoded alone (float32, the real default model).

Rows have mixed prompt lengths, finish at different steps (EOS, stop strings, max tokens), join
mid-way and are cancelled; sampling rows keep their own random streams.
"""

from __future__ import annotations

import pytest
import torch

from ppdecode.cache import KVCache, bytes_per_token
from ppdecode.config import GenerationConfig
from ppdecode.engine import Engine
from ppdecode.models import LoadedModel
from ppdecode.prompt_tokens import PromptTokens, default_prompt_tokens
from ppdecode.step import RowPlan, build_inputs, run_forward
from ppdecode.tree.buffers import build_buffers
from ppdecode.tree.spec import load_tree

from .helpers import PROMPTS
from .test_sampling import SAMPLES, TEMPERATURE, TOP_K, chi_square_p_value, exact_distribution

NEW_TOKENS = 40


@pytest.fixture(scope="module")
def engines(smollm_f32: LoadedModel) -> tuple[Engine, Engine]:
    tokens = default_prompt_tokens(smollm_f32)
    return Engine(smollm_f32, max_batch=1), Engine(smollm_f32, tokens, load_tree("default"), max_batch=8)


@pytest.fixture(scope="module")
def singles(engines: tuple[Engine, Engine]) -> dict[str, list[int]]:
    """Vanilla greedy, one prompt at a time: the reference every batched row must equal."""
    vanilla, _ = engines
    config = GenerationConfig(max_new_tokens=NEW_TOKENS)
    return {p: vanilla.generate_ids(vanilla.encode(p), config).token_ids for p in PROMPTS[:16]}


@pytest.mark.parametrize("lookup", [True, False], ids=["lookup", "no-lookup"])
@pytest.mark.parametrize("size", [1, 3, 8])
def test_each_row_of_a_batch_equals_vanilla_alone(engines, singles, size: int, lookup: bool) -> None:
    _, ppd = engines
    prompts = PROMPTS[size : 2 * size]  # mixed prompt lengths
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, lookup=lookup)
    results = ppd.generate_batch(prompts, config)
    assert [r.token_ids for r in results] == [singles[p] for p in prompts]
    assert all(r.stats.steps > 0 and r.stats.tau >= 1.0 for r in results)


def test_rows_finish_at_different_steps_and_join_mid_way(engines, singles) -> None:
    """More prompts than rows (queued, joining as rows free up), each with its own stopping rule."""
    vanilla, ppd = engines
    prompts = PROMPTS[:6]
    stop_text = vanilla.tokenizer.decode(singles[prompts[1]][5:8])
    configs = [
        GenerationConfig(max_new_tokens=NEW_TOKENS),
        GenerationConfig(max_new_tokens=NEW_TOKENS, stop=(stop_text,)),  # a stop string mid-answer
        GenerationConfig(max_new_tokens=7),  # max tokens early
        GenerationConfig(max_new_tokens=NEW_TOKENS, use_ppd=False),  # a vanilla row among PPD rows
        GenerationConfig(max_new_tokens=13),
        GenerationConfig(max_new_tokens=NEW_TOKENS),
    ]
    small = Engine(ppd.base, ppd.prompt_tokens, ppd.tree, max_batch=3)
    results = small.generate_batch(prompts, configs)
    assert results[0].token_ids == singles[prompts[0]]
    assert results[1].finish_reason == "stop" and stop_text not in results[1].text
    assert singles[prompts[1]][: len(results[1].token_ids)] == results[1].token_ids
    assert results[2].token_ids == singles[prompts[2]][:7] and results[2].finish_reason == "length"
    assert results[3].token_ids == singles[prompts[3]] and results[3].stats.tau == 1.0
    assert results[4].token_ids == singles[prompts[4]][:13]
    assert results[5].token_ids == singles[prompts[5]]
    # the stop string of row 1 never stops another row that happens to contain it
    alone = vanilla.tokenizer.decode(singles[prompts[0]], skip_special_tokens=True)
    assert results[0].text == alone


def test_eos_ends_a_row_while_others_go_on(engines) -> None:
    vanilla, ppd = engines
    short = "Reply with one word: yes or no?"
    config = GenerationConfig(max_new_tokens=64)
    expected = [vanilla.generate(p, config) for p in (short, PROMPTS[1])]
    got = ppd.generate_batch([short, PROMPTS[1]], config)
    assert expected[0].finish_reason == "eos" and got[0].finish_reason == "eos"
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]


def test_request_api_joins_mid_way_and_cancels(engines, singles) -> None:
    _, ppd = engines
    config = GenerationConfig(max_new_tokens=NEW_TOKENS)
    engine = Engine(ppd.base, ppd.prompt_tokens, ppd.tree, max_batch=4)
    first = engine.add_request(engine.encode(PROMPTS[0]), config)
    doomed = engine.add_request(engine.encode(PROMPTS[1]), config)
    tokens: dict[str, list[int]] = {first: [], doomed: []}
    results = {}
    late = None
    for step in range(200):
        if step == 3:
            late = engine.add_request(engine.encode(PROMPTS[2]), config)
            tokens[late] = []
            engine.cancel(doomed)
        for out in engine.step():
            tokens[out.request_id].extend(out.chunk.token_ids)
            assert len(out.chunk.origins) == len(out.chunk.token_ids)
            if out.finished:
                assert out.result is not None
                results[out.request_id] = out.result
        if not engine.has_unfinished():
            break
    assert late is not None and set(results) == {first, doomed, late}
    assert results[first].token_ids == tokens[first] == singles[PROMPTS[0]]
    assert results[late].token_ids == singles[PROMPTS[2]]
    assert results[doomed].finish_reason == "cancelled"
    assert results[doomed].token_ids == singles[PROMPTS[1]][: len(results[doomed].token_ids)]
    assert engine.num_running == engine.num_waiting == 0


def test_an_abandoned_stream_frees_its_row(engines, singles) -> None:
    _, ppd = engines
    stream = ppd.stream(PROMPTS[0], max_new_tokens=NEW_TOKENS)
    next(stream)
    stream.close()
    assert stream.result.finish_reason == "cancelled" and not ppd.has_unfinished()
    assert ppd.generate(PROMPTS[0], max_new_tokens=NEW_TOKENS).token_ids == singles[PROMPTS[0]]


def test_a_long_prompt_is_prefilled_in_chunks(engines, singles) -> None:
    vanilla, ppd = engines
    chunked = Engine(ppd.base, ppd.prompt_tokens, ppd.tree, max_batch=2, prefill_chunk=7)
    prompts = PROMPTS[:2]
    got = chunked.generate_batch(prompts, GenerationConfig(max_new_tokens=NEW_TOKENS))
    assert [r.token_ids for r in got] == [singles[p] for p in prompts]


def test_seeded_sampling_does_not_depend_on_the_batch(engines) -> None:
    _, ppd = engines
    config = GenerationConfig(max_new_tokens=24, temperature=0.8, top_p=0.9, seed=7)
    alone = ppd.generate(PROMPTS[3], config).token_ids
    others = [GenerationConfig(max_new_tokens=30, temperature=1.0, seed=s) for s in (1, 2)]
    batch = ppd.generate_batch([PROMPTS[5], PROMPTS[3], PROMPTS[6]], [others[0], config, others[1]])
    assert batch[1].token_ids == alone


def test_lossless_sampling_inside_a_batch(smollm_f32: LoadedModel) -> None:
    """The chi-square test of the core engine, with the samples drawn as rows of batches."""
    engine = Engine(smollm_f32, default_prompt_tokens(smollm_f32), load_tree("default"), max_batch=8)
    ids = engine.encode("Name a colour.")
    dist = exact_distribution(smollm_f32, ids)
    configs = [
        GenerationConfig(max_new_tokens=3, temperature=TEMPERATURE, top_k=TOP_K, seed=s)
        for s in range(SAMPLES)
    ]
    filler = engine.encode(PROMPTS[0])  # a greedy neighbour in every batch
    counts: dict[tuple[int, ...], int] = {}
    for start in range(0, SAMPLES, 7):
        group = configs[start : start + 7]
        results = engine.generate_batch_ids(
            [ids] * len(group) + [filler], [*group, GenerationConfig(max_new_tokens=5)]
        )
        for result in results[:-1]:
            counts[tuple(result.token_ids)] = counts.get(tuple(result.token_ids), 0) + 1
    assert chi_square_p_value(counts, dist, SAMPLES) > 0.001


def test_one_host_transfer_per_greedy_step(engines, monkeypatch: pytest.MonkeyPatch) -> None:
    _, ppd = engines
    engine = Engine(ppd.base, ppd.prompt_tokens, ppd.tree, max_batch=4)
    for prompt in PROMPTS[:4]:
        engine.add_request(engine.encode(prompt), GenerationConfig(max_new_tokens=16))
    engine.step()  # the prefills
    calls = []
    original_tolist, original_item = torch.Tensor.tolist, torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: calls.append("tolist") or original_tolist(self))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append("item") or original_item(self))
    for _ in range(3):
        calls.clear()
        assert engine.num_running == 4
        engine.step()
        assert calls == ["tolist"]


def test_two_engines_on_one_model_do_not_interfere(smollm_f32: LoadedModel, singles) -> None:
    """Deep prompt tokens pass their layer vectors with each forward: a plain engine beside them sees none."""
    tree = load_tree("default")
    plain_engine = Engine(smollm_f32, PromptTokens.initial(smollm_f32), tree)
    config = GenerationConfig(max_new_tokens=NEW_TOKENS)
    before = [plain_engine.generate(p, config) for p in PROMPTS[:2]]  # no deep tokens on the model yet
    deep = default_prompt_tokens(smollm_f32)  # the shipped tokens: deep, and trained
    assert deep.layer_deltas is not None
    deep_engine = Engine(smollm_f32, deep, tree)  # its hooks now sit on the shared decoder layers
    for prompt, alone in zip(PROMPTS[:2], before, strict=True):
        a = deep_engine.generate(prompt, config)
        b = plain_engine.generate(prompt, config)
        assert a.token_ids == b.token_ids == singles[prompt]
        # the plain engine's guesses are exactly what they were before: nothing of the deep tokens leaks
        assert b.stats.accept_lengths == alone.stats.accept_lengths
        assert b.stats.accepted_per_position == alone.stats.accepted_per_position
    assert a.stats.accept_lengths != b.stats.accept_lengths  # each engine decodes with its own guesses
    # and the deep vectors do reach the layers through the step's forward: without them the prompt
    # slots' hidden states differ
    without = PromptTokens(deep.config)
    without.load_state_dict(deep.state_dict())
    with torch.no_grad():
        without.layer_deltas.zero_()
    ids = plain_engine.encode(PROMPTS[0])
    buffers = build_buffers(tree, 0, deep.ensemble)
    plan = RowPlan(0, (ids[-1],), buffers, tuple(ids[:-1]))
    slots = list(buffers.slot_groups[0])
    hidden = []
    with torch.inference_mode():
        for tokens in (deep, without):
            inputs = build_inputs(smollm_f32, tokens, [plan])
            cache = KVCache(smollm_f32.model, 1, len(ids) + 16)
            hidden.append(run_forward(smollm_f32, inputs, cache)[0, slots])
    assert not torch.allclose(hidden[0], hidden[1])


def test_overrides_behave_as_documented(engines) -> None:
    _, ppd = engines
    sampled = ppd.generate(PROMPTS[0], temperature=0.7, seed=1, max_new_tokens=8)
    assert len(sampled.token_ids) == 8
    greedy = ppd.generate(PROMPTS[0], GenerationConfig(temperature=0.7), temperature=0.0, max_new_tokens=8)
    assert greedy.token_ids == ppd.generate(PROMPTS[0], max_new_tokens=8).token_ids
    hf_names = ppd.generate(PROMPTS[0], do_sample=False, stop_strings=["\n"], max_new_tokens=8)
    assert hf_names.token_ids == greedy.token_ids[: len(hf_names.token_ids)]
    with pytest.raises(ValueError, match="valid names: .*max_new_tokens"):
        ppd.generate(PROMPTS[0], max_tokens=8)


def test_bad_sizes_are_refused_with_a_remedy(smollm_f32: LoadedModel) -> None:
    with pytest.raises(ValueError, match="raise cache_memory"):
        Engine(smollm_f32, max_batch=64, max_length=8192, cache_memory=2**20)
    engine = Engine(smollm_f32, max_batch=2, max_length=64)
    assert engine.cache_report()["max_length"] == 64
    with pytest.raises(ValueError, match="shorten the prompt"):
        engine.add_request(list(range(100, 170)), GenerationConfig())
    with pytest.raises(ValueError, match="one per prompt"):
        engine.generate_batch(["a", "b"], [GenerationConfig()])


def test_cache_commit_and_move_keep_the_right_rows(smollm_f32: LoadedModel) -> None:
    cache = KVCache(smollm_f32.model, rows=3, capacity=16)
    keys = cache.layers[0].keys
    assert keys is not None
    keys[1, :, :10] = torch.arange(10, dtype=keys.dtype)[None, :, None]
    cache.lengths[1] = 4
    cache.commit(1, 4, [0, 2, 5])  # inputs written at 4, 6, 9 are kept at 4, 5, 6
    assert cache.lengths[1] == 7
    assert keys[1, 0, :7, 0].tolist() == [0, 1, 2, 3, 4, 6, 9]
    cache.move(1, 0)
    assert cache.lengths == [7, 0, 0] and keys[0, 0, :7, 0].tolist() == [0, 1, 2, 3, 4, 6, 9]
    assert cache.nbytes == 3 * 16 * bytes_per_token(smollm_f32.model)
    cache.grow(4, 32)  # more rows and positions: committed rows survive
    assert keys is not cache.layers[0].keys and cache.lengths == [7, 0, 0, 0]
    grown = cache.layers[0].keys
    assert grown is not None and grown[0, 0, :7, 0].tolist() == [0, 1, 2, 3, 4, 6, 9]
