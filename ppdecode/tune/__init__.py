"""Hardware-aware dynamic sparse trees (METHOD §5): profile this device, choose a tree, use it.

    latency.py  forward latency L_fp(n) over a realistic cache, measured with the engine's forward
    decode.py   measured decoding (τ, ms/step, tokens/s) on held-out prompts
    choice.py   pure: τ(b) / step time(b) per budget, the choice, budget parsing
    store.py    hardware key and profile JSON in the user cache
    tuner.py    tune(): build the family, measure, choose, confirm
    resolve.py  resolve_tree(): "auto" → stored profile, shipped tuned tree, quick tune, default
    plots.py    PNG plots of a profile
"""

from ppdecode.tune.choice import BudgetOption, Prediction, parse_budgets, predict, predict_all
from ppdecode.tune.latency import LatencyProfile, measure_forward_latency
from ppdecode.tune.resolve import AUTO, resolve_tree
from ppdecode.tune.store import HardwareKey, HardwareProfile, current_key, load_profile, save_profile
from ppdecode.tune.tuner import TuneConfig, accuracy_for, tune

__all__ = [
    "AUTO",
    "BudgetOption",
    "HardwareKey",
    "HardwareProfile",
    "LatencyProfile",
    "Prediction",
    "TuneConfig",
    "accuracy_for",
    "current_key",
    "load_profile",
    "measure_forward_latency",
    "parse_budgets",
    "predict",
    "predict_all",
    "resolve_tree",
    "save_profile",
    "tune",
]
