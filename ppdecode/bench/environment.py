"""What a benchmark ran on: device, dtype, threads, library versions, git revision, machine load."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ppdecode.bench.memory import current_rss, module_bytes
from ppdecode.models import LoadedModel, device_name


def environment(base: LoadedModel) -> dict[str, Any]:
    """Device, dtype, threads, library versions and the git revision, for the summary."""
    import transformers

    import ppdecode

    env: dict[str, Any] = {
        "model": base.name,
        "fingerprint": base.fingerprint,
        "device": str(base.device),
        "device_name": device_name(base.device),
        "dtype": str(base.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ppdecode": getattr(ppdecode, "__version__", _package_version()),
        "git": _git_revision(Path(ppdecode.__file__).resolve().parent.parent),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "model_weight_bytes": module_bytes(base.model),
        "rss_after_load_bytes": current_rss(),
    }
    return env


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ppdecode")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git_revision(root: Path) -> str | None:
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}{'-dirty' if dirty else ''}"
