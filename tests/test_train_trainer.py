"""Training on the real default model: loss goes down, round trip, resume, crash safety, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ppdecode.config import GenerationConfig
from ppdecode.engine import Engine
from ppdecode.models import load_model
from ppdecode.prompt_tokens import PromptTokens
from ppdecode.train.data import FORMAT, Dataset, Sample, write_dataset
from ppdecode.train.trainer import TrainConfig, train
from ppdecode.tree.spec import DEFAULT_TREE, load_tree

STEPS = 6


pytestmark = pytest.mark.usefixtures("one_thread")


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def base():
    return load_model(dtype="float32", device="cpu")


def _dataset(base, path: Path, num_prompt_tokens: int = 3, fingerprint: str | None = None) -> Path:
    """Two short sequences (the model's own greedy answers would do the same; hand-made is faster)."""
    texts = [
        ("Count from one to ten:", " one, two, three, four, five, six, seven, eight, nine, ten."),
        ("The days of the week are", " Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday."),
    ]
    samples = []
    for prompt, answer in texts:
        prompt_ids = base.tokenizer(prompt)["input_ids"]
        response_ids = base.tokenizer(answer, add_special_tokens=False)["input_ids"]
        samples.append(Sample(prompt, "test", "train", prompt_ids, response_ids, [0, 3, 6, 9]))
    header = {
        "format": FORMAT,
        "version": 1,
        "base_model": base.name,
        "fingerprint": fingerprint or base.fingerprint,
        "num_prompt_tokens": num_prompt_tokens,
    }
    write_dataset(Dataset(header, samples), path)
    return path


def _config(tmp: Path, data: Path, **overrides) -> TrainConfig:
    options = dict(
        dataset=str(data),
        output=str(tmp / "tokens"),
        steps=STEPS,
        batch_size=2,
        cuts_per_sample=4,
        dtype="float32",
        device="cpu",
        checkpoint_every=2,
        lr=1e-2,
        deep=True,
    )
    options.update(overrides)
    return TrainConfig(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    data = _dataset(base, tmp / "data.jsonl")
    config = _config(tmp, data)
    return config, train(config, base, progress=False)


def test_loss_decreases_and_only_prompt_parameters_train(base, trained):
    config, result = trained
    assert result.steps == STEPS and len(result.losses) == STEPS
    assert result.losses[-1] < 0.8 * result.losses[0], result.losses  # same batch every step
    assert not any(p.requires_grad for p in base.model.parameters())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in result.tokens.parameters())
    record = result.tokens.config.record
    assert record["trainable_parameters"] == 3 * 576 + 3 * 30 * 576
    assert 0 < record["trainable_share"] < 1e-3 and record["loss_last"] < record["loss_first"]


def test_artifact_round_trip_and_engine_decodes_with_it(base, trained):
    config, result = trained
    loaded = PromptTokens.load(config.output, base)
    assert loaded.config.trained and loaded.config.deep
    for name, tensor in result.tokens.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    engine = Engine(base, loaded, load_tree(DEFAULT_TREE))
    ids = engine.encode("List three colours.")
    ppd = engine.generate_ids(ids, GenerationConfig(max_new_tokens=24))
    vanilla = engine.generate_ids(ids, GenerationConfig(max_new_tokens=24, use_ppd=False))
    assert ppd.token_ids == vanilla.token_ids and ppd.stats.tau >= 1.0


def test_resume_continues_at_the_last_checkpoint(base, trained, tmp_path):
    config, reference = trained
    data = Path(config.dataset)
    interrupted = _config(tmp_path, data)

    def crash_at_5(step: int, loss: float) -> None:
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        train(interrupted, base, on_step=crash_at_5, progress=False)
    assert not Path(interrupted.output).exists()  # no artifact from a run that did not finish
    state = torch.load(interrupted.checkpoint_dir / "state.pt", weights_only=False)
    assert state["step"] == 4  # checkpoints every 2 steps: the last whole one
    seen: list[int] = []
    resumed = train(
        _config(tmp_path, data, resume=True), base, on_step=lambda s, _: seen.append(s), progress=False
    )
    assert seen == [5, 6] and resumed.steps == STEPS
    for name, tensor in reference.tokens.state_dict().items():
        torch.testing.assert_close(resumed.tokens.state_dict()[name], tensor, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="other settings"):
        train(_config(tmp_path, data, resume=True, lr=5e-3), base, progress=False)


def test_a_failed_run_never_replaces_a_good_artifact(base, trained, tmp_path, monkeypatch):
    config, result = trained
    good = tmp_path / "tokens"
    result.tokens.save(good)
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    run = _config(tmp_path, Path(config.dataset), steps=2)

    def crash(step: int, loss: float) -> None:
        raise Crash

    with pytest.raises(Crash):
        train(run, base, on_step=crash, progress=False)

    import ppdecode.prompt_tokens as module

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train(run, base, progress=False)
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp dirs left


def test_refuses_a_dataset_for_another_model_or_n(base, tmp_path):
    other = _dataset(base, tmp_path / "other.jsonl", fingerprint="0123456789abcdef")
    with pytest.raises(ValueError, match="built for base model"):
        train(_config(tmp_path, other), base, progress=False)
    wrong_n = _dataset(base, tmp_path / "n4.jsonl", num_prompt_tokens=4)
    with pytest.raises(ValueError, match="N = 4 prompt tokens, not 3"):
        train(_config(tmp_path, wrong_n), base, progress=False)
    assert json.loads((tmp_path / "n4.jsonl").read_text().splitlines()[0])["num_prompt_tokens"] == 4


def test_cli_commands_are_registered():
    from typer.testing import CliRunner

    from ppdecode.cli import app

    runner = CliRunner()
    for command in ("data", "train", "accuracy"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
    assert "--no-deep" in runner.invoke(app, ["train", "--help"]).output
