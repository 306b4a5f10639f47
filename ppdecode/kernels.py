"""The decoding engine's fast path on a CPU: linear layers prepacked for its matrix kernels, and
grouped-query attention that reads the cache's key/value heads as they are.

A decoding step on a CPU is mostly the decoder's linear layers, with a handful of rows (one for
vanilla decoding, a tree's worth with guesses) against weights that stream from memory. PyTorch's
``nn.Linear`` hands the row-major weight to the BLAS each call; oneDNN can instead keep the weight in
its own blocked layout, reordered once (what ``torch.compile``'s CPU backend does with frozen weights).
On the CPUs measured that makes a step's linear layers 1.3× (bf16) to 2-3× (float32) faster, with
the same memory (the packed copy replaces the weight).

``pack_linears`` swaps every ``nn.Linear`` of the decoder's layers (and an output layer that is not
tied to the input embeddings) for a ``PackedLinear``, in place, after stacking a Llama layer's q/k/v
and gate/up projections into one linear layer each (``ppdecode.fused``), and switches the model to
grouped attention (``ppdecode.attention``: a tree step of several inputs does not copy the keys per
head).
The packed layers have no backward: a packed model decodes (``ppdecode.load``, ``ppd generate``,
``ppd serve``, ``ppd tune``, ``ppd bench``); training loads its own model. A row's result does not
depend on the other rows in the call (the kernels are batch-invariant; a lone row is fed as two, see
``PackedLinear``), and on GPUs, other dtypes or a PyTorch without oneDNN nothing is swapped.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from ppdecode.attention import use_grouped_attention, uses_grouped_attention
from ppdecode.fused import fuse_layers
from ppdecode.models import LoadedModel

logger = logging.getLogger(__name__)

ROWS_HINT = 8  # rows per call the blocked layout is chosen for (a tree step); 1 to 64 all run well
PACKED_DTYPES = (torch.float32, torch.bfloat16)


class PackedLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` [out, in] held in oneDNN's blocked layout; inference only."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()  # [out, in]
        # not persistent: an opaque blocked tensor cannot be saved; a packed model is never saved
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, ROWS_HINT)
        self.register_buffer("packed_weight", packed, persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())  # [out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                "this model's linear layers are packed for decoding and have no backward; load the "
                "model again (ppdecode.models.load_model) to train with it"
            )
        if x.numel() == self.in_features:
            # oneDNN's one-row kernel sums a long row in another order than its kernel for two rows or
            # more; feeding a lone row twice keeps every row's result the same whatever the call's size
            pair = x.reshape(1, self.in_features).expand(2, -1).contiguous()
            out = torch.ops.mkldnn._linear_pointwise(pair, self.packed_weight, self.bias, "none", [], "")
            return out[:1].reshape(*x.shape[:-1], self.out_features)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def packs(dtype: torch.dtype) -> bool:
    """Whether this CPU has packed kernels for ``dtype``: oneDNN, and for bf16 the instructions its bf16
    kernels need (AVX-512 BW/VL/DQ or AVX-NE-CONVERT; with AVX2 alone a bf16 product stays stock)."""
    if dtype not in PACKED_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    return dtype != torch.bfloat16 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def can_pack(base: LoadedModel) -> bool:
    """Whether this model's device and dtype have packed kernels here (a CPU with oneDNN)."""
    return base.device.type == "cpu" and packs(base.dtype)


def is_packed(model: Any) -> bool:
    return any(isinstance(module, PackedLinear) for module in model.modules())


def kernels_name(base: LoadedModel) -> str:
    """The kernels a model decodes with: part of what a latency profile was measured on."""
    linear = "packed" if is_packed(base.model) else "stock"
    return f"{linear}+grouped-attention" if uses_grouped_attention(base.model) else linear


def _same_tensor(a: Any, b: Any) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.data_ptr() == b.data_ptr()


@torch.no_grad()
def pack_linears(base: LoadedModel) -> int:
    """Pack the decoder's linear layers in place and switch to grouped attention (idempotent); returns
    how many linear layers were packed now.

    The output layer is packed too unless it shares its weight with the input embeddings (the
    embedding lookup needs the plain weight, and a packed copy would add a vocabulary's worth of
    memory). Modules shared with another model (a draft cut from this one) are packed once.
    """
    if not can_pack(base):
        logger.debug("linear layers left as they are on %s / %s", base.device, base.dtype)
        return 0
    model = base.model
    fuse_layers(model)  # before packing: the stacked projections are packed like any linear layer
    owners: list[nn.Module] = list(model.get_decoder().layers.modules())
    head = model.get_output_embeddings()
    embedding = model.get_input_embeddings()
    tied = embedding is not None and _same_tensor(getattr(head, "weight", None), embedding.weight)
    packed = 0
    for owner in owners:
        for name, child in list(owner.named_children()):
            if type(child) is nn.Linear:
                setattr(owner, name, PackedLinear(child))
                packed += 1
    if type(head) is nn.Linear and not tied:
        model.set_output_embeddings(PackedLinear(head))
        packed += 1
    use_grouped_attention(model)
    if packed:
        logger.info("packed %d linear layers of %s for this CPU's kernels", packed, base.name)
    return packed


def packed_copy(base: LoadedModel) -> LoadedModel:
    """A packed copy of ``base`` (``base`` itself where nothing can be packed); ``base`` stays as it is.

    A benchmark decodes with both: our engine on the packed copy, ``transformers`` on the model as a
    user of it has it.
    """
    if not can_pack(base) or is_packed(base.model):
        return base
    copied = dataclasses.replace(base, model=copy.deepcopy(base.model))
    pack_linears(copied)
    return copied
