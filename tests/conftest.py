"""Shared fixtures: the real default model, loaded once per session (float32 where exactness is claimed)."""

from __future__ import annotations

import os

import pytest
import torch

from ppdecode.models import LoadedModel, load_model

torch.manual_seed(0)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm_f32() -> LoadedModel:
    return load_model("smollm2-135m-instruct", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def smollm_bf16() -> LoadedModel:
    return load_model("smollm2-135m-instruct", device="cpu", dtype="bfloat16")
