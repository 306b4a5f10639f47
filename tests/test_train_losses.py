"""The one-forward trick gives the base model's own distributions at the right distances (METHOD §2)."""

from __future__ import annotations

import pytest
import torch

from ppdecode.models import load_model
from ppdecode.prompt_tokens import PromptTokens, PromptTokensConfig
from ppdecode.train.losses import (
    cross_entropy_loss,
    distillation_loss,
    make_batch,
    rank_counts,
    targets,
    teacher_student_logits,
)

N = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return load_model(dtype="float32", device="cpu")


def _deep_tokens(base, ensemble: int = 1) -> PromptTokens:
    tokens = PromptTokens.initial(base, PromptTokensConfig(num_prompt_tokens=N, ensemble=ensemble, deep=True))
    with torch.no_grad():  # non-zero deltas, so that the hooks are exercised
        assert tokens.layer_deltas is not None
        tokens.layer_deltas.copy_(
            torch.randn(tokens.layer_deltas.shape, generator=torch.Generator().manual_seed(1))
        )
    return tokens


def _sample(base):
    prompt = base.tokenizer("The capital of France is Paris. The capital of Italy is")["input_ids"]
    response = base.tokenizer(" Rome, and the capital of Spain is Madrid.")["input_ids"]
    return prompt, response


def _reference(base, tokens: PromptTokens, context: list[int], ys: list[int]):
    """Sequential forwards: teacher Q_k after reading y_1..y_k; student P_k from [context, prompt tokens]."""
    model, embed = base.model, base.model.get_input_embeddings()
    teacher = []
    with torch.no_grad():
        for k in range(1, N + 1):
            teacher.append(model(input_ids=torch.tensor([context + ys[:k]])).logits[0, -1])
    student = []
    for member in range(tokens.ensemble):
        slots = tokens.embeddings[:, member]  # [N, H]
        inputs = torch.cat([embed(torch.tensor(context)), slots])[None]
        length = len(context)
        positions = torch.arange(length + N, dtype=torch.long)
        deep = tokens.forward_kwargs(torch.arange(length, length + N), torch.arange(N))
        with torch.no_grad():
            student.append(
                model(inputs_embeds=inputs, position_ids=positions[None], **deep).logits[0, length:]
            )
    return torch.stack(student).mean(0), torch.stack(teacher)  # [N, vocab] each


def test_one_forward_matches_sequential_forwards(base):
    """Deep EPTs (V = 2), two rows of different lengths (padding), several cuts, both forward modes."""
    tokens = _deep_tokens(base, ensemble=2)
    prompt, response = _sample(base)
    other = (
        base.tokenizer("Hello there")["input_ids"],
        base.tokenizer(" friend, how are you today?")["input_ids"],
    )
    cuts = [0, len(response) - N - 1]
    batch = make_batch([(prompt, response, cuts), (other[0], other[1], [1])], N)
    with torch.no_grad():
        split = teacher_student_logits(base, tokens, batch, "split")
        single = teacher_student_logits(base, tokens, batch, "single")
    assert split[0].shape == split[1].shape == (2, 2, N, base.model.config.vocab_size)
    sequence = prompt + response
    for c, t in enumerate(cuts):
        length = len(prompt) + t
        ref_student, ref_teacher = _reference(
            base, tokens, sequence[:length], sequence[length : length + N + 1]
        )
        for student, teacher in (split, single):
            torch.testing.assert_close(teacher[0, c], ref_teacher, atol=2e-4, rtol=1e-4)
            torch.testing.assert_close(student[0, c], ref_student, atol=2e-4, rtol=1e-4)
    # Targets are the next tokens after each y, and teacher argmax follows the model's own text.
    t = cuts[1]
    assert targets(batch, N)[0, 1].tolist() == sequence[len(prompt) + t + 1 : len(prompt) + t + 1 + N]


def test_losses_and_ranks():
    torch.manual_seed(0)
    teacher = torch.randn(2, 4, N, 50)
    valid = torch.tensor([[True, True, False, False], [True, True, True, True]])
    assert distillation_loss(teacher, teacher, valid).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(2, 4, N, 50, requires_grad=True)
    loss = distillation_loss(student, teacher, valid)
    assert loss.item() > 0
    loss.backward()
    assert student.grad is not None and student.grad[0, 2:].abs().sum() == 0  # padding cuts carry no gradient
    truth = teacher.argmax(-1)
    assert cross_entropy_loss(teacher * 100, truth, valid).item() < 1e-2
    counts = rank_counts(teacher, truth, valid, top_k=10)
    assert counts.shape == (N, 10) and counts[:, 0].tolist() == [6] * N and counts[:, 1:].sum() == 0
