"""Plots of a hardware profile (PNG, matplotlib's Agg backend, imported only when plotting; optional)."""

from __future__ import annotations

from pathlib import Path

from ppdecode.plotting import pyplot
from ppdecode.tune.store import HardwareProfile

LATENCY_PNG = "tune-latency.png"
TAU_PNG = "tune-tau.png"
SPEEDUP_PNG = "tune-speedup.png"


def write_plots(profile: HardwareProfile, out_dir: str | Path) -> list[Path]:
    """Forward latency vs input size; expected and measured τ vs budget; speed-up vs budget.

    Returns the files written: none without matplotlib (a warning says the plots were skipped).
    """
    plt = pyplot("the tuning plots")
    if plt is None:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = profile.key
    where = f"{key.model} · {key.device_name} · {key.dtype} · {key.threads} threads"
    budgets = [row.budget for row in profile.rows]
    confirmed = [row for row in profile.rows if row.measured is not None]
    paths: list[Path] = []

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    latency = profile.latency
    grid = list(range(1, max(latency.sizes) + 1))
    ax.plot(grid, [latency.forward_at(n) for n in grid], color="tab:blue", lw=1,
            label="used: non-decreasing fit, interpolated")
    ax.plot(latency.sizes, latency.forward_ms, "o", color="tab:blue", ms=3, label="measured (median)")
    ax.set_xlabel("inputs per forward n")
    ax.set_ylabel("forward latency L_fp(n) [ms]")
    ax.set_title(f"forward latency over a {latency.cache_length}-token cache\n{where}", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.legend()
    paths.append(_save(fig, out / LATENCY_PNG))

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    expected = [row.prediction.expected_tau for row in profile.rows]
    ax.plot(budgets, expected, color="tab:green", label="expected τ (accuracy table)")
    taus = [(row.budget, row.measured.tau) for row in profile.rows if row.measured is not None]
    if taus:
        ax.plot([b for b, _ in taus], [t for _, t in taus], "o", color="tab:red",
                label="measured τ (held-out prompts)")
    ax.set_xlabel("tree budget (inputs per step)")
    ax.set_ylabel("τ (tokens per step)")
    ax.set_title(f"accepted length vs budget\n{where}", fontsize=9)
    ax.legend()
    paths.append(_save(fig, out / TAU_PNG))

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(budgets, [row.prediction.speedup for row in profile.rows], color="tab:green",
            label="predicted τ(n) / step time(n)")
    measured = [(row.budget, profile.measured_speedup(row.budget)) for row in confirmed]
    points = [(b, s) for b, s in measured if s is not None]
    if points:
        ax.plot([b for b, _ in points], [s for _, s in points], "o", color="tab:red", label="measured")
    ax.axvline(profile.chosen_budget, color="black", ls="--", lw=1, label=f"chosen: {profile.chosen_budget}")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("tree budget (inputs per step)")
    ax.set_ylabel("speed-up over vanilla decoding")
    ax.set_title(f"speed-up vs budget\n{where}", fontsize=9)
    ax.legend()
    paths.append(_save(fig, out / SPEEDUP_PNG))
    return paths


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=120)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path
