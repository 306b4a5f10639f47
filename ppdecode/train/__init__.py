"""Training prompt tokens (METHOD §2): datasets, the one-forward distillation loss, the trainer, accuracy.

    sources.py   prompts: user files (ShareGPT, Alpaca, JSONL, text) and built-in offline sources
    data.py      self-distilled datasets: the base model answers greedily; random cut points; JSONL file
    losses.py    batch layout, the one-forward teacher/student logits, KL / CE losses, rank counts
    trainer.py   TrainConfig and train(): AdamW + cosine, checkpoints, resume, accelerate
    accuracy.py  held-out top-1..top-10 accuracy per prompt token, JSON for the tree builder, plot

Importing this package loads nothing heavy; each module imports torch/transformers itself.
"""
