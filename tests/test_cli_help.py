"""`ppd --help` and every command's `--help` answer without importing torch or transformers, and the
package's public names resolve on first use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ppdecode

HEAVY = ("torch", "transformers")

# Runs in a fresh interpreter: the test session itself has torch loaded already.
PROBE = """
import json, sys
import typer
from typer.testing import CliRunner
from ppdecode.cli import app

runner = CliRunner()
names = sorted(typer.main.get_command(app).commands)
answers = {}
for args in [[]] + [[name] for name in names]:
    result = runner.invoke(app, [*args, "--help"])
    answers[" ".join(["ppd", *args])] = [result.exit_code, result.output]
print(json.dumps({"commands": names, "answers": answers, "modules": sorted(sys.modules)}))
"""


def test_help_of_every_command_without_torch() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    probe = json.loads(out)
    assert {"generate", "train", "accuracy", "tune", "bench"} <= set(probe["commands"])
    for command, (code, text) in probe["answers"].items():
        assert code == 0, f"{command} --help: {text}"
        assert "Usage:" in text
    heavy = set(HEAVY) & set(probe["modules"])
    assert not heavy, f"--help imported {heavy}"


def test_the_entry_point_imports_no_torch() -> None:
    # -X importtime lists every module the real entry point imports, on stderr.
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ppdecode.cli", "--help"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "generate" in run.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if "|" in line}
    assert not imported & set(HEAVY)
    assert "ppdecode.commands.generate" in imported  # the probe did see the package's imports


def test_public_names_resolve_lazily() -> None:
    from ppdecode import Engine, GenerationConfig, load
    from ppdecode.config import GenerationConfig as Config
    from ppdecode.engine import Engine as EngineClass

    assert GenerationConfig is Config and Engine is EngineClass
    assert callable(load)
    assert set(ppdecode.__all__) <= set(dir(ppdecode))
    assert all(getattr(ppdecode, name) is not None for name in ppdecode.__all__)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        ppdecode.not_a_name  # noqa: B018
