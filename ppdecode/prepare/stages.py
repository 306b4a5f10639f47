"""The work folder of a preparation and the mechanism that runs, skips and records its stages.

``stages.json`` holds one record per stage: its settings (JSON, its inputs' digests included), its
state ("running" or "done"), its time and a one-line result. A stage is done when its record says
"done" with the settings of this run and its outputs exist; otherwise it runs, and its record is
written before (running) and after (done), atomically.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppdecode.tree.spec import write_json_atomic

STAGES = ("plan", "data", "train", "accuracy", "tune", "register")


@dataclass(frozen=True)
class StageEvent:
    """Progress of the run: a stage starts, is skipped (already done) or is done."""

    index: int  # 1-based
    total: int
    name: str
    state: str  # "start", "skip" or "done"
    message: str
    estimate_s: float | None = None  # the plan's estimate of this stage
    remaining_s: float | None = None  # estimates of the stages after it
    elapsed_s: float | None = None


@dataclass(frozen=True)
class WorkDir:
    """The files of a preparation's work folder."""

    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def stages(self) -> Path:
        return self.root / "stages.json"

    @property
    def prompts(self) -> Path:
        return self.root / "prompts.json"  # a sample of the user's prompt files

    @property
    def data(self) -> Path:
        return self.root / "data.jsonl"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def accuracy(self) -> Path:
        return self.root / "accuracy.json"

    @property
    def plot(self) -> Path:
        return self.root / "accuracy.png"

    @property
    def tree(self) -> Path:
        return self.root / "tree.json"

    @property
    def family(self) -> Path:
        return self.root / "tree-family"

    @property
    def profile(self) -> Path:
        return self.root / "profile.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


def normal(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so stored settings compare equal."""
    return json.loads(json.dumps(value, default=str))


def file_digest(path: Path) -> str:
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@dataclass
class StageLog:
    """The records of ``work``'s stages, and what this run did with each ("done" or "skipped")."""

    work: WorkDir
    on_event: Callable[[StageEvent], None]
    estimates: dict[str, float] = field(default_factory=dict)  # stage -> seconds, once planned
    states: dict[str, str] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.records = json.loads(self.work.stages.read_text())
        except (OSError, json.JSONDecodeError):
            self.records = {}

    def record(self, name: str) -> dict[str, Any]:
        return dict(self.records.get(name, {}))

    def run(
        self,
        name: str,
        settings: dict[str, Any],
        outputs: list[Path],
        body: Callable[[dict[str, Any]], str],
        start_message: str,
        valid: Callable[[], bool] = lambda: True,
    ) -> None:
        """Run ``body(previous record)`` unless the stage is done with these settings; record it.

        Done means: recorded as done with equal settings, every output exists, and ``valid()``.
        ``body`` returns the one-line result that the record and the progress view show.
        """
        settings = normal(settings)
        previous = self.record(name)
        if (
            previous.get("state") == "done"
            and previous.get("settings") == settings
            and all(path.exists() for path in outputs)
            and valid()
        ):
            self.states[name] = "skipped"
            self._emit(name, "skip", f"already done ({previous.get('detail', '')})")
            return
        self._emit(name, "start", start_message)
        self._write(name, {"settings": settings, "state": "running"})
        start = time.perf_counter()
        detail = body(previous)
        elapsed = time.perf_counter() - start
        self._write(name, {"settings": settings, "state": "done", "seconds": round(elapsed, 1),
                           "detail": detail})
        self.states[name] = "done"
        self._emit(name, "done", detail, elapsed)

    def _write(self, name: str, record: dict[str, Any]) -> None:
        self.records[name] = record
        write_json_atomic(self.work.stages, self.records)

    def _emit(self, name: str, state: str, message: str, elapsed: float | None = None) -> None:
        later = STAGES[STAGES.index(name) + 1 :]
        remaining = sum(self.estimates.get(s, 0.0) for s in later) if self.estimates else None
        self.on_event(StageEvent(
            STAGES.index(name) + 1, len(STAGES), name, state, message, self.estimates.get(name),
            remaining, elapsed,
        ))
