"""Held-out accuracy: the JSON format the tree builder reads, the plot, and what is counted."""

from __future__ import annotations

import json

import pytest
import torch

from ppdecode.models import load_model
from ppdecode.prompt_tokens import PromptTokens, PromptTokensConfig
from ppdecode.train.accuracy import accuracy_report, measure, plot_report, save_report, summary_table
from ppdecode.train.data import HELDOUT, TRAIN, Sample

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return load_model(dtype="float32", device="cpu")


def _heldout(base) -> list[Sample]:
    prompt = base.tokenizer("The alphabet goes")["input_ids"]
    answer = base.tokenizer(" a, b, c, d, e, f, g", add_special_tokens=False)["input_ids"]
    return [Sample("alphabet", "test", HELDOUT, prompt, answer, [0])]


def test_report_format_and_plot(base, tmp_path):
    tokens = PromptTokens.initial(base, PromptTokensConfig(num_prompt_tokens=2, deep=True))
    samples = _heldout(base)
    report = accuracy_report(base, tokens, samples)
    positions = len(samples[0].response_ids) - 2  # every cut t with t + N < len(answer)
    for part in (report, report["init"]):
        assert part["num_prompt_tokens"] == 2 and part["top_k"] == 10 and part["num_samples"] == positions
        assert part["base_model"] == base.name and part["fingerprint"] == base.fingerprint
        probs = torch.tensor(part["rank_probs"])
        cumulative = torch.tensor(part["topk_accuracy"])
        assert probs.shape == cumulative.shape == (2, 10)
        torch.testing.assert_close(probs.double().cumsum(1), cumulative.double(), atol=1e-5, rtol=0)
        assert (probs >= 0).all() and (cumulative <= 1 + 1e-6).all()
    # The untrained initialisation of these tokens is what was measured: both parts agree.
    assert report["topk_accuracy"] == report["init"]["topk_accuracy"]
    path = tmp_path / "acc.json"
    save_report(report, path)
    assert json.loads(path.read_text())["rank_probs"] == report["rank_probs"]
    plot_report(report, tmp_path / "acc.png")
    assert (tmp_path / "acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary_table(report).count("\n") == 3


@torch.no_grad()
def test_counts_the_rank_of_the_base_models_greedy_token_at_distance_2(base):
    """Sequential reference: at each cut, rank of argmax(model(context + y1)) in prompt token 1's logits."""
    tokens = PromptTokens.initial(base, PromptTokensConfig(num_prompt_tokens=1))
    sample = _heldout(base)[0]
    sequence = sample.prompt_ids + sample.response_ids
    embed = base.model.get_input_embeddings()
    expected = torch.zeros(10)
    for t in range(len(sample.response_ids) - 1):
        length = len(sample.prompt_ids) + t
        truth = base.model(input_ids=torch.tensor([sequence[: length + 1]])).logits[0, -1].argmax()
        inputs = torch.cat([embed(torch.tensor(sequence[:length])), tokens.embeddings[:, 0]])[None]
        student = base.model(inputs_embeds=inputs).logits[0, -1]
        rank = int((student > student[truth]).sum())
        if rank < 10:
            expected[rank] += 1
    result = measure(base, tokens, [sample])
    assert result["num_samples"] == len(sample.response_ids) - 1
    counts = torch.tensor(result["rank_probs"][0]) * result["num_samples"]
    torch.testing.assert_close(counts, expected, atol=1e-3, rtol=0)


def test_refuses_training_samples(base):
    tokens = PromptTokens.initial(base, PromptTokensConfig(num_prompt_tokens=1))
    sample = _heldout(base)[0]
    sample.split = TRAIN
    with pytest.raises(ValueError, match="held-out samples only"):
        accuracy_report(base, tokens, [sample])
    with pytest.raises(ValueError, match="no held-out samples"):
        accuracy_report(base, tokens, [])
