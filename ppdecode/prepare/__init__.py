"""``ppd prepare``: PPD for a model of your own in one resumable run.

    plan.py      time budget → how many prompts, steps, held-out prompts and how thorough a tune (pure)
    probe.py     the quick throughput probe the plan is scaled by, and the memory this device has free
    checks.py    what makes a model unpreparable, found before any long work (EOS, context, memory)
    stages.py    the work folder, and the record that runs, skips or resumes each stage
    pipeline.py  the stages (plan → data → train → accuracy → tune → register) and ``prepare``
    summary.py   what a preparation achieved: accuracy per distance, expected and measured τ, speed-up
    registry.py  where prepared prompt tokens and trees live in the user cache, and how they are found

Importing this package loads nothing heavy: ``registry`` is read by ``default_prompt_tokens`` and the
tree resolver, the other modules import torch and transformers themselves.
"""
