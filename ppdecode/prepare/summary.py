"""What a preparation achieved, as one JSON-ready dict: data, training, accuracy, tree and speed.

The measured τ and speed-up come from the tuner's confirmation: the chosen tree and vanilla decoding
greedily decode the same held-out prompts (the built-in benchmark set's first turns), with the prompt
tokens' guesses alone; ``ppd generate`` adds prompt lookup on top, which copies where answers repeat.
"""

from __future__ import annotations

from typing import Any

from ppdecode.models import LoadedModel
from ppdecode.prepare.plan import Plan
from ppdecode.tune.store import HardwareProfile


def summarize(
    base: LoadedModel,
    plan: Plan,
    dataset_header: dict[str, Any],
    train_record: dict[str, Any],
    accuracy: dict[str, Any],
    profile: HardwareProfile,
) -> dict[str, Any]:
    chosen = profile.row(profile.chosen_budget)
    measured, vanilla = chosen.measured, profile.vanilla
    speedup = profile.measured_speedup(profile.chosen_budget)
    return {
        "model": base.name,
        "fingerprint": base.fingerprint,
        "device": profile.key.device_name,
        "device_type": profile.key.device_type,
        "dtype": profile.key.dtype,
        "threads": profile.key.threads,
        "plan": {"prompts": plan.prompts, "steps": plan.steps, "estimates_s": plan.estimates},
        "data": {
            "train_prompts": dataset_header.get("num_train"),
            "heldout_prompts": dataset_header.get("num_heldout"),
            "answer_tokens": dataset_header.get("response_tokens"),
            "sources": dataset_header.get("sources"),
            "writer": dataset_header.get("writer", base.name),  # the model that answered the prompts
        },
        "training": {
            "steps": train_record.get("steps"),
            "loss_first": train_record.get("loss_first"),
            "loss_last": train_record.get("loss_last"),
            "trainable_parameters": train_record.get("trainable_parameters"),
        },
        "accuracy": [
            {
                "distance": i + 2, "top1": row[0], "top10": row[-1],
                "init_top1": init[0], "init_top10": init[-1],
            }
            for i, (row, init) in enumerate(
                zip(accuracy["topk_accuracy"], accuracy["init"]["topk_accuracy"], strict=True)
            )
        ],
        "accuracy_positions": accuracy.get("num_samples"),
        "tree": {
            "budget": profile.chosen_budget,
            "expected_tau": chosen.prediction.expected_tau,
            "predicted_speedup": chosen.prediction.speedup,
            "inputs_per_depth": list(chosen.input_sizes),
        },
        "measured": None if measured is None or vanilla is None else {
            "tau": measured.tau,
            "tokens_per_s": measured.tokens_per_s,
            "vanilla_tokens_per_s": vanilla.tokens_per_s,
            "speedup": speedup,
            "prompts": plan.tune.prompts,
            "max_new_tokens": plan.tune.max_new_tokens,
            "prompt_lookup": False,
        },
    }
