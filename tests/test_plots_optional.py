"""matplotlib is optional: every plot function returns without plots when it is missing, and says so."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from ppdecode.bench.plots import save_batch_plots, save_plots
from ppdecode.plotting import pyplot
from ppdecode.train.accuracy import plot_report
from ppdecode.tune.plots import write_plots
from tests.test_tune import fake_base, fake_profile, fake_tokens

PNG = b"\x89PNG\r\n\x1a\n"
REPORT = {  # the fields plot_report reads, for two prompt tokens and top-3
    "top_k": 3,
    "topk_accuracy": [[0.3, 0.4, 0.5], [0.2, 0.3, 0.35]],
    "init": {"topk_accuracy": [[0.1, 0.15, 0.2], [0.05, 0.1, 0.12]]},
    "base_model": "tiny-model",
    "num_samples": 7,
}


@pytest.fixture()
def no_matplotlib(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> pytest.LogCaptureFixture:
    # None in sys.modules makes `import matplotlib` (and its submodules) raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    caplog.set_level(logging.WARNING, logger="ppdecode.plotting")
    return caplog


def skipped(caplog: pytest.LogCaptureFixture, what: str) -> bool:
    return f"matplotlib is not installed: {what} skipped" in caplog.text


def test_pyplot_without_matplotlib(no_matplotlib: pytest.LogCaptureFixture) -> None:
    assert pyplot("the test plot") is None
    assert skipped(no_matplotlib, "the test plot")


def test_accuracy_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written = plot_report(REPORT, tmp_path / "accuracy.png")
    assert written == tmp_path / "accuracy.png"
    assert written.read_bytes()[:8] == PNG


def test_accuracy_plot_without_matplotlib(tmp_path: Path, no_matplotlib: pytest.LogCaptureFixture) -> None:
    assert plot_report(REPORT, tmp_path / "accuracy.png") is None
    assert not (tmp_path / "accuracy.png").exists()
    assert skipped(no_matplotlib, "the accuracy plot")


def test_tuning_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    paths = write_plots(fake_profile(fake_base(), fake_tokens()), tmp_path)
    assert len(paths) == 3
    assert all(path.read_bytes()[:8] == PNG for path in paths)


def test_tuning_plots_without_matplotlib(tmp_path: Path, no_matplotlib: pytest.LogCaptureFixture) -> None:
    assert write_plots(fake_profile(fake_base(), fake_tokens()), tmp_path / "plots") == []
    assert not (tmp_path / "plots").exists()
    assert skipped(no_matplotlib, "the tuning plots")


def test_benchmark_plots_without_matplotlib(tmp_path: Path, no_matplotlib: pytest.LogCaptureFixture) -> None:
    assert save_plots({}, [], tmp_path) == {}
    assert save_batch_plots({}, tmp_path) == {}
    assert list(tmp_path.iterdir()) == []
    assert skipped(no_matplotlib, "the benchmark plots")
