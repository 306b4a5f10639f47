"""The fused Llama layer (ppdecode.fused) computes what transformers' layer computes, is made once for
layers a draft shares, and leaves every other layout alone."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ppdecode.draft_model import cut_draft
from ppdecode.fused import FusedLlamaDecoderLayer, fusable, fuse_layers
from ppdecode.kernels import PackedLinear, can_pack, pack_linears
from ppdecode.models import LoadedModel

from .helpers import PROMPTS


def tiny_llama(**overrides: object) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="sdpa",
        **overrides,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("bias", [False, True])
def test_a_fused_layer_decodes_as_transformers_layer_does(bias: bool) -> None:
    model = tiny_llama(attention_bias=bias)
    fused = copy.deepcopy(model)
    assert fuse_layers(fused.model) == 2
    assert all(isinstance(layer, FusedLlamaDecoderLayer) for layer in fused.model.layers)
    assert not hasattr(fused.model.layers[0].self_attn, "q_proj")
    ids = torch.randint(0, 96, (3, 11))
    with torch.no_grad():
        expected, got = model(input_ids=ids).logits, fused(input_ids=ids).logits  # [3, 11, vocab]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        # with a cache, token by token, as generate() runs it
        kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
        assert fused.generate(ids[:1], **kwargs).tolist() == model.generate(ids[:1], **kwargs).tolist()
    assert fuse_layers(fused.model) == 0  # idempotent


def test_other_layouts_keep_transformers_layer() -> None:
    gelu = tiny_llama(hidden_act="gelu")
    assert not fusable(gelu.model.layers[0])
    assert fuse_layers(gelu.model) == 0
    biased_mlp = tiny_llama(mlp_bias=True)
    assert fuse_layers(biased_mlp.model) == 0


def test_the_default_model_fused_writes_the_same_greedy_text(smollm_f32: LoadedModel) -> None:
    fused = copy.deepcopy(smollm_f32.model)
    fuse_layers(fused.model)
    tok = smollm_f32.tokenizer
    for prompt in PROMPTS[:3]:
        ids = tok(prompt, return_tensors="pt").input_ids
        kwargs = {"max_new_tokens": 24, "do_sample": False}
        with torch.no_grad():
            assert fused.generate(ids, **kwargs).tolist() == smollm_f32.model.generate(ids, **kwargs).tolist()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
def test_a_draft_cut_before_packing_shares_the_fused_layers(smollm_f32: LoadedModel) -> None:
    target = LoadedModel.wrap(copy.deepcopy(smollm_f32.model), smollm_f32.tokenizer, smollm_f32.name)
    if not can_pack(target):
        pytest.skip("no packed kernels here")
    draft = cut_draft(target, 4, torch.arange(512), "draft")  # a shortlist head: never packed
    layers = target.model.config.num_hidden_layers
    assert pack_linears(target) == 4 * layers  # qkv, o, gate-up, down per layer; the tied head stays
    assert pack_linears(draft) == 0  # its layers are the target's, fused and packed once
    for mine, theirs in zip(draft.model.model.layers, target.model.model.layers, strict=False):
        assert mine is theirs and isinstance(mine, FusedLlamaDecoderLayer)
        assert isinstance(mine.self_attn.qkv_proj, PackedLinear)
