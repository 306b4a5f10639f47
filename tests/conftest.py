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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a small shared CPU, spinning OpenMP threads make the short
    forwards of training tests many times slower. Modules ask for it with ``usefixtures``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
