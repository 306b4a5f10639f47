"""matplotlib when it is installed: every plot in ppdecode is optional, its JSON is always written."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

MISSING = "matplotlib is not installed"


def pyplot(what: str) -> Any | None:
    """``matplotlib.pyplot`` on the Agg backend, or None (after a warning that ``what`` is skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("%s: %s skipped (pip install matplotlib)", MISSING, what)
        return None
    return plt
