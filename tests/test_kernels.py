"""The CPU fast path (ppdecode.kernels): packed linear layers give the same numbers as nn.Linear,
grouped attention the same as transformers' sdpa, and PPD on them stays lossless."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ppdecode.attention import grouped_sdpa_forward, uses_grouped_attention
from ppdecode.config import GenerationConfig
from ppdecode.engine import Engine
from ppdecode.kernels import PackedLinear, can_pack, is_packed, kernels_name, pack_linears, packed_copy, packs
from ppdecode.models import LoadedModel
from ppdecode.planner import VANILLA
from ppdecode.prompt_tokens import default_prompt_tokens
from ppdecode.proposers import LookupProposer, PromptTokenProposer
from ppdecode.step import KEY_BLOCK, RowPlan, build_inputs
from ppdecode.tree.spec import load_tree
from ppdecode.tune.store import HardwareKey, current_key

from .helpers import PROMPTS

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
# bf16 is packed only where the CPU has oneDNN's bf16 instructions (not on one with AVX2 alone)
PACKED = [
    pytest.param(dtype, marks=pytest.mark.skipif(not packs(dtype), reason=f"no packed {dtype} kernels here"))
    for dtype in (torch.float32, torch.bfloat16)
]


@pytest.fixture(scope="module")
def packed(smollm_f32: LoadedModel) -> LoadedModel:
    return packed_copy(smollm_f32)


@pytest.mark.parametrize("dtype", PACKED)
def test_packed_linear_matches_nn_linear_and_is_batch_invariant(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 160, bias=True).to(dtype)
    packed = PackedLinear(linear)
    x = torch.randn(2, 9, 96, dtype=dtype)
    with torch.inference_mode():
        want, got = linear(x), packed(x)
        alone = torch.stack([packed(x[:, i : i + 1])[:, 0] for i in range(9)], dim=1)
    assert got.shape == want.shape == (2, 9, 160)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
    # a row's result does not depend on the other rows of the call (a batch of one vs nine)
    assert torch.equal(alone, got)


@pytest.mark.parametrize("dtype", PACKED)
@pytest.mark.parametrize("shape", [(576, 1536), (1536, 576)])
def test_a_lone_row_gets_the_same_result_as_in_a_call_of_many(
    shape: tuple[int, int], dtype: torch.dtype
) -> None:
    # oneDNN's one-row kernel sums a long row (the MLP's down projection: 1536 inputs) in another order
    # than its many-row kernel; a lone row is fed as two, so decoding one token equals a tree step's row
    torch.manual_seed(0)
    packed = PackedLinear(nn.Linear(*shape, bias=False).to(dtype))
    x = torch.randn(1, 12, shape[0], dtype=dtype)
    with torch.inference_mode():
        many = packed(x)
        alone = torch.cat([packed(x[:, i : i + 1]) for i in range(12)], dim=1)
        pairs = torch.cat([packed(x[:, i : i + 2]) for i in range(0, 12, 2)], dim=1)
    assert alone.shape == many.shape == (1, 12, shape[1])
    assert torch.equal(alone, many) and torch.equal(pairs, many)
    assert packed(x[0, 0]).shape == (shape[1],)  # a lone row without batch dims keeps its shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_attention_equals_sdpa_with_repeated_keys(
    smollm_f32: LoadedModel, dtype: torch.dtype
) -> None:
    attention = smollm_f32.model.model.layers[0].self_attn
    groups = attention.num_key_value_groups
    assert groups > 1  # SmolLM2: 9 query heads on 3 key/value heads
    generator = torch.Generator().manual_seed(0)
    batch, width, keys, kv_heads, dim = 3, 5, 23, attention.config.num_key_value_heads, attention.head_dim
    query = torch.randn(batch, kv_heads * groups, width, dim, generator=generator).to(dtype)
    key, value = (torch.randn(batch, kv_heads, keys, dim, generator=generator).to(dtype) for _ in "kv")
    allowed = torch.rand(batch, 1, width, keys, generator=generator) < 0.7
    allowed[..., 0] = True  # every query sees at least one key
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    for w in (width, 2):  # tree steps of 5 and 2 inputs
        args = (attention, query[:, :, :w], key, value, mask[:, :, :w])
        got, _ = grouped_sdpa_forward(*args, scaling=attention.scaling)
        want, _ = sdpa_attention_forward(*args, scaling=attention.scaling)
        assert got.shape == want.shape == (batch, w, kv_heads * groups, dim)
        tolerance = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_querys_attention_is_the_same_alone_and_in_a_call_of_many(
    smollm_f32: LoadedModel, dtype: torch.dtype
) -> None:
    # a token decoded alone and the same token verified in a chain, a tree or a prefill: other queries
    # in the call, and keys masked past its own (a whole KEY_BLOCK is read), leave its result as it is
    attention = smollm_f32.model.model.layers[0].self_attn
    generator = torch.Generator().manual_seed(1)
    kv_heads, dim, start, width = attention.config.num_key_value_heads, attention.head_dim, 70, 40
    keys = start + width + 10  # the call reads past its last input, as a padded step does
    heads = kv_heads * attention.num_key_value_groups
    query = torch.randn(1, heads, width, dim, generator=generator).to(dtype)
    key, value = (torch.randn(1, kv_heads, keys, dim, generator=generator).to(dtype) for _ in "kv")
    allowed = torch.zeros(1, 1, width, keys, dtype=torch.bool)
    for w in range(width):
        allowed[0, 0, w, : start + w + 1] = True  # causal: the cache, then the call's inputs up to itself
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    many, _ = grouped_sdpa_forward(attention, query, key, value, mask, scaling=attention.scaling)
    for w in (0, 17, width - 1):
        alone, _ = grouped_sdpa_forward(
            attention, query[:, :, w : w + 1], key, value, mask[:, :, w : w + 1], scaling=attention.scaling
        )
        assert torch.equal(alone[:, 0], many[:, w])
    # a lone query with no mask (every key in the call is its own) is the grouped one with nothing hidden
    seen = start + 1
    lone = (attention, query[:, :, :1], key[:, :, :seen], value[:, :, :seen])
    free, _ = grouped_sdpa_forward(*lone, None)
    hidden, _ = grouped_sdpa_forward(*lone, mask[:, :, :1, :seen])
    assert torch.equal(free, hidden)


def test_a_step_reads_keys_in_whole_blocks_with_the_padding_masked(smollm_f32: LoadedModel) -> None:
    for start, capacity in ((0, 500), (70, 500), (127, 500), (190, 200)):
        plan = RowPlan(start, (5,), VANILLA, ())
        inputs = build_inputs(smollm_f32, None, [plan], capacity=capacity)
        needed = start + 1
        assert inputs.key_length == min(capacity, -(-needed // KEY_BLOCK) * KEY_BLOCK)
        if inputs.key_length == needed:
            assert inputs.mask is None  # a lone token that reads every key needs no mask
            continue
        assert inputs.mask is not None and inputs.mask.shape == (1, 1, 1, inputs.key_length)
        visible = inputs.mask[0, 0, 0] == 0
        assert visible[:needed].all() and not visible[needed:].any()
    unbounded = build_inputs(smollm_f32, None, [RowPlan(70, (5,), VANILLA, ())])
    assert unbounded.key_length == 71  # no cache given: exactly the keys needed


@pytest.mark.skipif(not packs(torch.bfloat16), reason="no packed bf16 kernels here")
def test_prompt_lookup_in_bf16_writes_vanillas_text_token_for_token(smollm_bf16: LoadedModel) -> None:
    # chain steps verify a copied run in one forward; in bf16 their rounding is that of one-token steps
    # (whole key blocks, one attention kernel for every query count), so the texts are the same
    packed = packed_copy(smollm_bf16)
    vanilla = Engine(packed)
    lookup = Engine(packed, proposer=LookupProposer(PromptTokenProposer()))
    config = GenerationConfig(max_new_tokens=64, lookup_chain=8, max_lookup_chain=8)
    chains = 0
    for prompt in PROMPTS[:8]:
        expected = vanilla.generate(prompt, GenerationConfig(max_new_tokens=64, use_ppd=False)).token_ids
        result = lookup.generate(prompt, config)
        assert result.token_ids == expected, prompt
        chains += result.stats.chain_steps
    assert chains > 0  # copies were verified as chains


def test_packed_linear_refuses_to_train() -> None:
    packed = PackedLinear(nn.Linear(8, 4))
    x = torch.randn(3, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="load the model again"):
        packed(x)
    with torch.no_grad():
        assert packed(x).shape == (3, 4)


def test_packing_swaps_the_decoder_linears_once_and_leaves_the_original(
    smollm_f32: LoadedModel, packed: LoadedModel
) -> None:
    assert can_pack(smollm_f32)
    layers = smollm_f32.model.config.num_hidden_layers
    swapped = [m for m in packed.model.modules() if isinstance(m, PackedLinear)]
    assert len(swapped) == 4 * layers  # qkv, o, gate-up, down (stacked); the tied output layer stays
    assert not isinstance(packed.model.get_output_embeddings(), PackedLinear)
    assert pack_linears(packed) == 0  # idempotent
    assert not is_packed(smollm_f32.model)  # the copy was packed, not the model it came from
    assert (kernels_name(packed), kernels_name(smollm_f32)) == ("packed+grouped-attention", "stock")
    assert uses_grouped_attention(packed.model) and not uses_grouped_attention(smollm_f32.model)
    again = LoadedModel.wrap(packed.model, packed.tokenizer, packed.name)  # wrapping a packed model
    assert again.fingerprint == packed.fingerprint


def test_a_profile_from_the_stock_kernels_does_not_stand_in_for_packed_ones(
    smollm_f32: LoadedModel, packed: LoadedModel
) -> None:
    tokens = default_prompt_tokens(packed)
    key = current_key(packed, tokens)
    assert key.kernels == "packed+grouped-attention"
    old = {k: v for k, v in key.to_dict().items() if k != "kernels"}  # a profile stored before the field
    stored = HardwareKey.from_dict(old)
    assert stored.kernels == "stock"
    assert any(d.startswith("kernels") for d in stored.differences(key))
    assert stored.digest() != key.digest()


def test_ppd_on_packed_layers_equals_vanilla_alone_and_in_a_batch(packed: LoadedModel) -> None:
    tokens = default_prompt_tokens(packed)
    vanilla, ppd = Engine(packed), Engine(packed, tokens, load_tree("default"), max_batch=4)
    prompts = PROMPTS[:8]
    config = GenerationConfig(max_new_tokens=80)
    expected = [vanilla.generate(p, config).token_ids for p in prompts]
    assert [ppd.generate(p, config).token_ids for p in prompts[:4]] == expected[:4]
    batch = ppd.generate_batch(prompts, config)  # 8 requests through 4 rows: rows join mid-way
    assert [r.token_ids for r in batch] == expected
    assert sum(r.stats.steps for r in batch) < sum(map(len, expected))  # guesses were accepted
