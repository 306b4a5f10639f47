"""What makes a model unpreparable, found before any long work, and the recipe shrunk to what fits.

- no EOS token: answers would never end, and the data and the decoder both stop at EOS;
- no decoder layers that deep prompt tokens can attach to (not a decoder-only causal LM);
- a context window shorter than the recipe's sequences: prompts and answers are cut to fit;
- too little memory for the data batch or the training step: batches, cuts and then the sequence
  length are halved until the estimate fits, and the run is refused if even the smallest does not.

No chat template is not an error: the plan then leaves out self-instructed prompts and the model
continues plain-text prompts (``plan.split_sources``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from ppdecode.cache import bytes_per_token
from ppdecode.models import LoadedModel
from ppdecode.prepare.plan import Recipe
from ppdecode.prompt_tokens import decoder_layers

logger = logging.getLogger(__name__)

SAFETY = 1.5  # estimates leave out allocator slack and the framework's own buffers
MIN_PROMPT_TOKENS, MIN_NEW_TOKENS, MIN_CUTS = 32, 16, 8
GIB = 2**30


@dataclass(frozen=True)
class ModelShape:
    """The sizes the memory estimates depend on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    kv_bytes_per_token: int  # keys and values of one position, all layers
    element_size: int  # bytes of one activation (the model's dtype)

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        config = model.config.get_text_config()
        hidden = int(config.hidden_size)
        return cls(
            layers=int(config.num_hidden_layers),
            hidden=hidden,
            intermediate=int(getattr(config, "intermediate_size", None) or 4 * hidden),
            heads=int(config.num_attention_heads),
            vocab=int(config.vocab_size),
            kv_bytes_per_token=bytes_per_token(model),
            element_size=next(model.parameters()).element_size(),
        )


def generate_bytes(shape: ModelShape, batch: int, sequence: int) -> int:
    """Peak of batched generation: the KV cache, one layer's prefill activations and attention scores."""
    kv = batch * sequence * shape.kv_bytes_per_token
    layer = batch * sequence * (4 * shape.hidden + 3 * shape.intermediate) * shape.element_size
    scores = batch * shape.heads * sequence * sequence * 4
    return kv + layer + scores + batch * shape.vocab * 4


def train_step_bytes(shape: ModelShape, batch: int, sequence: int, slots: int) -> int:
    """Peak of a training step (``losses.teacher_student_logits``, split mode, and the loss's backward).

    The sequence runs without grad into a KV cache; the ``slots`` prompt-slot inputs of every row keep
    their activations and attention scores in every layer for the backward; teacher and student logits
    are float32 with their log-softmaxes and gradients (about six copies).
    """
    kv = batch * sequence * shape.kv_bytes_per_token
    prefill = batch * sequence * (4 * shape.hidden + 3 * shape.intermediate) * shape.element_size
    prefill += batch * shape.heads * sequence * sequence * 4
    per_layer = batch * slots * (10 * shape.hidden + 3 * shape.intermediate) * shape.element_size
    per_layer += batch * shape.heads * slots * (sequence + slots) * 4
    logits = 6 * batch * slots * shape.vocab * 4
    return kv + prefill + shape.layers * per_layer + logits


def recipe_bytes(shape: ModelShape, recipe: Recipe) -> int:
    slots = recipe.cuts * recipe.num_prompt_tokens
    return int(SAFETY * max(
        generate_bytes(shape, recipe.data_batch_size, recipe.sequence_length),
        train_step_bytes(shape, recipe.train_batch_size, recipe.sequence_length, slots),
    ))


def check_model(base: LoadedModel) -> None:
    """Refuse a model that cannot be prepared at all, with what to do about it."""
    if not base.eos_token_ids:
        raise ValueError(
            f"{base.name} defines no EOS token (neither its tokenizer nor its generation config): its "
            "answers would never end; set tokenizer.eos_token (and generation_config.eos_token_id) in the "
            "model directory, e.g. tokenizer.save_pretrained(...) after setting it"
        )
    decoder_layers(base.model)  # raises if prompt tokens' per-layer vectors have nowhere to go


def fit_context(recipe: Recipe, context_length: int) -> Recipe:
    """The recipe with prompts and answers cut so that its sequences fit the model's context window."""
    overhead = recipe.sequence_length - recipe.max_prompt_tokens - recipe.max_new_tokens
    room = context_length - overhead
    if recipe.max_prompt_tokens + recipe.max_new_tokens <= room:
        return recipe
    new_tokens = max(MIN_NEW_TOKENS, min(recipe.max_new_tokens, room // 2))
    prompt_tokens = room - new_tokens
    if prompt_tokens < MIN_PROMPT_TOKENS or new_tokens <= recipe.num_prompt_tokens + 1:
        raise ValueError(
            f"the model reads at most {context_length} tokens, too few for a prompt, its answer and "
            f"{recipe.num_prompt_tokens} prompt tokens (at least "
            f"{MIN_PROMPT_TOKENS + MIN_NEW_TOKENS + overhead}); it cannot be prepared"
        )
    logger.warning(
        "the model reads at most %d tokens: prompts are cut to %d tokens and answers to %d",
        context_length, prompt_tokens, new_tokens,
    )
    return dataclasses.replace(recipe, max_prompt_tokens=prompt_tokens, max_new_tokens=new_tokens)


def _smaller(recipe: Recipe) -> Recipe | None:
    """One step down in memory: data batch, then training batch, cuts, and the sequence length."""
    if recipe.data_batch_size > 1:
        return dataclasses.replace(recipe, data_batch_size=max(1, recipe.data_batch_size // 2))
    if recipe.train_batch_size > 1:
        return dataclasses.replace(recipe, train_batch_size=max(1, recipe.train_batch_size // 2))
    if recipe.cuts > MIN_CUTS:
        return dataclasses.replace(recipe, cuts=max(MIN_CUTS, recipe.cuts // 2))
    if recipe.max_prompt_tokens > MIN_PROMPT_TOKENS or recipe.max_new_tokens > MIN_NEW_TOKENS:
        return dataclasses.replace(
            recipe,
            max_prompt_tokens=max(MIN_PROMPT_TOKENS, recipe.max_prompt_tokens // 2),
            max_new_tokens=max(MIN_NEW_TOKENS, recipe.num_prompt_tokens + 2, recipe.max_new_tokens // 2),
        )
    return None


def fit_memory(recipe: Recipe, shape: ModelShape, available: int | None, name: str = "the model") -> Recipe:
    """The largest recipe, shrunk step by step from ``recipe``, whose estimated peak fits ``available``."""
    if available is None:
        logger.info("free memory unknown on this system: not checking that the recipe fits")
        return recipe
    fitted: Recipe | None = recipe
    while fitted is not None and recipe_bytes(shape, fitted) > available:
        fitted = _smaller(fitted)
    if fitted is None:
        smallest = recipe
        while (step := _smaller(smallest)) is not None:
            smallest = step
        raise ValueError(
            f"preparing {name} needs about {recipe_bytes(shape, smallest) / GIB:.1f} GiB beyond its weights "
            f"even with batches of 1 and short sequences, but {available / GIB:.1f} GiB are free; free some "
            "memory, load the model in a smaller dtype (--dtype bfloat16) or on a larger device (--device)"
        )
    if fitted != recipe:
        changed = {
            f.name: (getattr(recipe, f.name), getattr(fitted, f.name))
            for f in dataclasses.fields(recipe)
            if getattr(recipe, f.name) != getattr(fitted, f.name)
        }
        logger.warning(
            "%.1f GiB free: shrinking the recipe to fit (%s)", available / GIB,
            ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()),
        )
    return fitted
