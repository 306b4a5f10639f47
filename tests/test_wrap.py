"""A model already in memory: ``LoadedModel.wrap`` and ``ppdecode.wrap`` decode exactly like ``load``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ppdecode import load, wrap
from ppdecode.models import LoadedModel, model_dir

from .helpers import PROMPTS

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def held() -> tuple[Any, Any]:
    """The default model as a user holds it: loaded with transformers itself, float32, sdpa."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, directory = model_dir(MODEL)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="sdpa")
    return model, AutoTokenizer.from_pretrained(directory)


def test_wrap_is_what_load_model_makes(held: tuple[Any, Any], smollm_f32: LoadedModel) -> None:
    model, tokenizer = held
    base = LoadedModel.wrap(model, tokenizer)
    assert base.name == smollm_f32.name == MODEL  # from the model's name_or_path
    assert base.fingerprint == smollm_f32.fingerprint
    assert base.eos_token_ids == smollm_f32.eos_token_ids and base.eos_token_ids
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert LoadedModel.wrap(model, tokenizer, name="mine").name == "mine"


def test_the_wrapped_engine_decodes_like_the_loaded_one(held: tuple[Any, Any]) -> None:
    model, tokenizer = held
    wrapped = wrap(model, tokenizer, tree="default")
    loaded = load(MODEL, tree="default", device="cpu", dtype="float32")
    assert wrapped.prompt_tokens is not None and loaded.prompt_tokens is not None
    for prompt in PROMPTS[:3]:
        mine = wrapped.generate(prompt, max_new_tokens=32, temperature=0.0)
        theirs = loaded.generate(prompt, max_new_tokens=32, temperature=0.0)
        assert mine.token_ids == theirs.token_ids
    vanilla = wrap(model, tokenizer, prompt_tokens=None).generate(PROMPTS[0], max_new_tokens=32)
    assert vanilla.token_ids == wrapped.generate(PROMPTS[0], max_new_tokens=32).token_ids


def _fake(attention: str | None, head: object | None = object()) -> Any:
    return SimpleNamespace(config=SimpleNamespace(_attn_implementation=attention),
                           get_output_embeddings=lambda: head)


def test_wrap_refuses_other_attention_and_a_model_without_head() -> None:
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        LoadedModel.wrap(_fake("eager"), None)
    with pytest.raises(ValueError, match="no output layer"):
        LoadedModel.wrap(_fake("sdpa", head=None), None)
