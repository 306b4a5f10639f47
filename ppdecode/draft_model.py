"""The demonstration draft model (METHOD §6): the default model's first layers, a small trained exit
and a frequency-ranked shortlist of its vocabulary.

A draft must be far cheaper than its target and share its tokenizer. This one is built from the
target itself: its first ``layers`` decoder layers, then an *exit* (``h + W h`` then the target's
final norm, W trained) and an output layer over the ``shortlist`` most frequent tokens only
(FR-Spec): on SmolLM2-135M the full 49k-entry output layer costs a fifth of a forward. Its logits
outside the shortlist are the dtype's lowest value, so it never proposes them; the target verifies
with its full vocabulary, so output stays exact.

With ``rank`` 0 the draft's layers are the target's own modules (no copy). With a rank, each of their
linear layers also learns a low-rank update ``W + B A`` (A: [rank, in], B: [out, rank]): the layers
then learn to finish the target's work early, not only the exit. The updates are merged into a copy
of those layers when the draft is cut (a draft forward costs the same; the copy is the draft's own
memory).

What is trained (the exit and the low-rank factors) and the shortlist are stored in one safetensors
file, shipped for the default model; ``train_draft`` makes it by self-distillation: the draft learns
the target's next-token distribution on the same text.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ppdecode.models import LoadedModel, fingerprint, load_model

logger = logging.getLogger(__name__)

PACKAGED = Path(__file__).parent / "data" / "drafts"
FACTORS_DTYPE = torch.float16  # low-rank factors as stored, and as merged after training
TEACHER_TOP = 64  # the target's most likely tokens a draft learns per position (the rest is ~0)


@dataclass(frozen=True)
class DistillText:
    """One token sequence to distil on; the draft learns the target's next token from position
    ``first`` on (an answer's first token is predicted at its prompt's last position)."""

    ids: list[int]
    first: int = 0


def _as_text(text: list[int] | DistillText) -> DistillText:
    return text if isinstance(text, DistillText) else DistillText(list(text))


@dataclass(frozen=True)
class DraftSpec:
    name: str  # the draft's model name (what its prompt tokens and trees are found by)
    target: str  # the model it is cut from
    layers: int
    shortlist: int
    rank: int = 0  # of the trained updates of the draft's layers (0: the target's layers, shared)


# Drafts built from an embedded model: name -> spec; the target's demonstration draft by target name.
DRAFTS = {"smollm2-135m-draft": DraftSpec("smollm2-135m-draft", "smollm2-135m-instruct", 8, 8192, 16)}
DEFAULT_DRAFT = {spec.target: name for name, spec in DRAFTS.items()}


class DraftExit(nn.Module):
    """norm(h + W h): maps the hidden state after the draft's last layer towards the target's last."""

    norm: Any  # the target's final norm (a copy): its weight trains too

    def __init__(self, norm: nn.Module, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, hidden, bias=False)
        nn.init.zeros_(self.proj.weight)  # starts as the plain early exit
        self.norm = norm

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden + self.proj(hidden))


class LowRankLinear(nn.Module):
    """``base(x) + (x Aᵀ) Bᵀ``: a frozen linear layer and its trained low-rank update (B starts at zero)."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.a = nn.Parameter(
            torch.randn(rank, base.in_features, dtype=base.weight.dtype) / base.in_features**0.5
        )
        self.b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.a.T) @ self.b.T


def adapted_linears(layers: nn.ModuleList) -> dict[str, nn.Linear]:
    """The linear layers of ``layers`` that learn a low-rank update, by name ("3.mlp.down_proj")."""
    found = {
        f"{i}.{name}": module for i, layer in enumerate(layers) for name, module in layer.named_modules()
    }
    return {name: module for name, module in found.items() if type(module) is nn.Linear}


@torch.no_grad()
def merge_updates(layers: nn.ModuleList, factors: dict[str, torch.Tensor]) -> None:
    """Add each trained ``B A`` (``factors``: "NAME.a", "NAME.b") to its layer's weight, in place."""
    linears = adapted_linears(layers)
    names = {key.rsplit(".", 1)[0] for key in factors}
    if names - set(linears):
        raise ValueError(f"trained updates for layers the draft lacks: {sorted(names - set(linears))[:3]}")
    for name in names:
        weight = linears[name].weight
        update = factors[f"{name}.b"].float() @ factors[f"{name}.a"].float()  # [out, in]
        weight.copy_((weight.float() + update.to(weight.device)).to(weight.dtype))


def _plain_layers(target: LoadedModel, layers: int) -> nn.ModuleList:
    """A copy of the target's first ``layers`` decoder layers as transformers makes them; a target whose
    layers are already fused or packed for decoding is loaded again for it."""
    from ppdecode.fused import FusedLlamaDecoderLayer
    from ppdecode.kernels import is_packed

    source = target.model.model.layers[:layers]
    if is_packed(source) or any(isinstance(layer, FusedLlamaDecoderLayer) for layer in source):
        fresh = load_model(target.name, device=str(target.device), dtype=target.dtype)
        source = fresh.model.model.layers[:layers]
    return nn.ModuleList(copy.deepcopy(list(source)))


class ShortlistHead(nn.Module):
    """The output layer restricted to ``ids``: logits [..., vocab], the lowest value elsewhere."""

    ids: torch.Tensor

    def __init__(self, weight: torch.Tensor, ids: torch.Tensor, vocab: int) -> None:
        super().__init__()
        self.register_buffer("ids", ids, persistent=False)  # [F]
        self.weight = nn.Parameter(weight[ids].clone(), requires_grad=False)  # [F, H]
        self.vocab = vocab

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        scores = hidden @ self.weight.T  # [..., F]
        full = scores.new_full((*scores.shape[:-1], self.vocab), torch.finfo(scores.dtype).min)
        return full.index_copy_(-1, self.ids, scores)


def cut_draft(
    target: LoadedModel, layers: int, shortlist_ids: torch.Tensor | None, name: str, own_layers: bool = False
) -> LoadedModel:
    """A draft of ``target``'s first ``layers`` layers with an untrained exit: the target's own layer
    modules, or with ``own_layers`` a copy of them (what trained updates are merged into).

    For the Llama layout of the embedded default model (``model.layers``, ``model.norm``,
    ``model.rotary_emb``, ``lm_head``)."""
    model = target.model
    config = copy.deepcopy(model.config)
    total = config.num_hidden_layers
    if not 1 <= layers < total:
        raise ValueError(f"a draft keeps 1..{total - 1} of the target's {total} layers, got {layers}")
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    config.tie_word_embeddings = False
    with torch.device("meta"):
        draft: Any = type(model)(config)
    shared = {k: v for k, v in model.state_dict().items() if ".layers." not in f".{k}"}
    shared["lm_head.weight"] = model.get_output_embeddings().weight
    draft.load_state_dict(shared, strict=False, assign=True)
    # shared, the layers are the target's own modules: what is done to them (packing) is done once
    own = _plain_layers(target, layers) if own_layers else None
    draft.model.layers = own if own is not None else nn.ModuleList(model.model.layers[:layers])
    # buffers made on the meta device (rotary frequencies) come from the target's modules
    draft.model.rotary_emb = model.model.rotary_emb
    hidden = config.hidden_size
    exit_ = DraftExit(copy.deepcopy(model.model.norm), hidden).to(target.device, target.dtype)
    draft.model.norm = exit_
    head = model.get_output_embeddings().weight
    if shortlist_ids is not None:
        draft.lm_head = ShortlistHead(head, shortlist_ids.to(target.device), head.shape[0])
    draft.config._attn_implementation = "sdpa"
    draft.eval().requires_grad_(False)
    draft.generation_config = model.generation_config
    return LoadedModel(
        name, draft, target.tokenizer, fingerprint(draft, target.tokenizer), target.eos_token_ids
    )


def exit_of(draft: LoadedModel) -> DraftExit:
    return draft.model.model.norm


def save_draft(
    draft: LoadedModel, path: Path, record: dict[str, Any], factors: dict[str, torch.Tensor] | None = None
) -> None:
    """Write what was trained (the exit, the layers' low-rank ``factors`` if any) and the shortlist to
    ``path`` (safetensors), atomically."""
    from safetensors.torch import save_file

    head = draft.model.lm_head
    tensors = {"proj": exit_of(draft).proj.weight.float().cpu().contiguous()}
    tensors["norm"] = exit_of(draft).norm.weight.float().cpu().contiguous()
    if isinstance(head, ShortlistHead):
        tensors["shortlist"] = head.ids.cpu().to(torch.int64)
    for name, factor in (factors or {}).items():
        tensors[f"layers.{name}"] = factor.detach().to(FACTORS_DTYPE).cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"record": json.dumps(record)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_draft(
    spec: str,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    target: LoadedModel | None = None,
) -> LoadedModel:
    """The demonstration draft ``spec`` (a name of ``DRAFTS``), cut from its target (loaded, or given)."""
    from safetensors import safe_open

    draft_spec = DRAFTS[spec]
    target = target or load_model(draft_spec.target, device=device, dtype=dtype)
    path = PACKAGED / f"{spec}.safetensors"
    if not path.is_file():
        raise ValueError(f"the draft {spec!r} has no trained exit at {path}; make it with `ppd make-draft`")
    with safe_open(str(path), "pt") as stored:
        tensors = {key: stored.get_tensor(key) for key in stored.keys()}  # noqa: SIM118
    factors = {key.removeprefix("layers."): t for key, t in tensors.items() if key.startswith("layers.")}
    draft = cut_draft(target, draft_spec.layers, tensors.get("shortlist"), spec, own_layers=bool(factors))
    if factors:
        merge_updates(draft.model.model.layers, factors)
    exit_ = exit_of(draft)
    exit_.proj.weight.copy_(tensors["proj"].to(exit_.proj.weight))
    exit_.norm.weight.copy_(tensors["norm"].to(exit_.norm.weight))
    return draft


def resolve_draft(target: LoadedModel, spec: str) -> LoadedModel:
    """The draft model ``spec`` names for ``target`` ("default": its demonstration draft; a name of
    ``DRAFTS``; any model ``load_model`` takes), on the target's device and dtype; a draft with
    another tokenizer is refused."""
    name = DEFAULT_DRAFT.get(target.name) if spec == "default" else spec
    if name is None:
        raise ValueError(
            f"no demonstration draft is made for {target.name} (only for {', '.join(DEFAULT_DRAFT)}); give "
            "--draft MODEL, a smaller model with the same tokenizer"
        )
    if name in DRAFTS and DRAFTS[name].target == target.name:
        draft = load_draft(name, target=target)
    else:
        draft = load_model(name, device=str(target.device), dtype=target.dtype)
    if draft.tokenizer.get_vocab() != target.tokenizer.get_vocab():
        raise ValueError(
            f"the draft {draft.name} has another tokenizer than {target.name}: a draft must share the "
            "target's token ids; pick a draft of the same family"
        )
    return draft


def token_frequencies(target: LoadedModel, texts: Sequence[list[int] | DistillText]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for text in texts:
        counts.update(_as_text(text).ids)
    counts.update({int(t): 1 for t in target.eos_token_ids})
    return counts


def train_draft(
    target: LoadedModel,
    draft: LoadedModel,
    texts: Sequence[list[int] | DistillText],
    seconds: float,
    rank: int = 0,
    steps: int | None = None,
    batch_size: int = 8,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Self-distillation of the draft: cross-entropy from the target's next-token distribution (its
    ``TEACHER_TOP`` most likely tokens, over the shortlist) to the draft's, on ``texts`` (token id
    sequences, learnt from their ``first`` position on), for about ``seconds`` (or ``steps`` steps,
    if that comes first).

    The exit always learns; with ``rank`` > 0 each linear layer of the draft's layers learns a
    low-rank update too, merged into them at the end (the draft must own its layers: ``cut_draft(...,
    own_layers=True)``). AdamW at ``lr``: 3e-3 for the exit alone, 1e-3 with the updates by default.
    The target's distributions are computed once per distinct text and kept. Returns the training
    record and the low-rank factors ("NAME.a", "NAME.b"; none with rank 0)."""
    from tqdm import tqdm

    model = draft.model
    layers = model.model.layers
    if rank and any(
        layer is shared for layer, shared in zip(layers, target.model.model.layers, strict=False)
    ):
        raise ValueError(
            "a draft that shares the target's layers cannot learn updates of them: cut it with own_layers"
        )
    student: Any = copy.deepcopy(model).float().requires_grad_(False)
    adapters: dict[str, LowRankLinear] = {}
    if rank:
        for name in adapted_linears(student.model.layers):
            path, child = name.rsplit(".", 1)
            owner = student.model.layers.get_submodule(path)
            adapters[name] = LowRankLinear(getattr(owner, child), rank)
            setattr(owner, child, adapters[name])
    student.model.norm.requires_grad_(True)
    trained = [p for p in student.parameters() if p.requires_grad]
    head = model.lm_head
    ids = head.ids if isinstance(head, ShortlistHead) else None
    weight = head.weight.detach().float()  # [F or vocab, H]
    lr = lr if lr is not None else (1e-3 if rank else 3e-3)
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    teachers: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}  # text -> [n, TOP] probs, ids
    fast = target.dtype == torch.bfloat16
    start, step, losses, agree = time.perf_counter(), 0, [], []
    bar = tqdm(total=int(seconds), desc="training the draft", unit="s", disable=not progress)
    while time.perf_counter() - start < seconds and (steps is None or step < steps):
        chosen = [rng.randrange(len(texts)) for _ in range(batch_size)]
        batch = [_as_text(texts[i]) for i in chosen]
        tokens, seen = _padded(batch)
        keys = [(t.first, *t.ids) for t in batch]
        missing = [k for k, key in enumerate(keys) if key not in teachers]
        if missing:
            with torch.no_grad():
                logits = target.model(
                    input_ids=tokens.to(target.device), attention_mask=seen.to(target.device)
                ).logits
            for k in missing:
                teacher = logits[k, batch[k].first : len(batch[k].ids)].float()  # [n, V]
                teacher = teacher[:, ids] if ids is not None else teacher
                top = teacher.topk(min(TEACHER_TOP, teacher.shape[-1]), dim=-1)
                teachers[keys[k]] = (top.values.softmax(-1).to(torch.bfloat16).cpu(), top.indices.cpu())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            hidden = student.model(input_ids=tokens, attention_mask=seen).last_hidden_state
        loss = hidden.new_zeros(())
        hits = total = 0
        for k, key in enumerate(keys):
            probs, index = teachers[key]
            logprobs = (hidden[k, batch[k].first : len(batch[k].ids)].float() @ weight.T).log_softmax(-1)
            loss = loss - (probs.float() * logprobs.gather(-1, index)).sum(-1).mean() / batch_size
            hits += int((logprobs.argmax(-1) == index[:, 0]).sum())
            total += len(index)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(float(loss.detach()))
        agree.append(hits / max(total, 1))
        bar.n = min(int(time.perf_counter() - start), int(seconds))
        bar.set_postfix(
            step=step,
            loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}",
            top1=f"{sum(agree[-20:]) / len(agree[-20:]):.3f}",
        )
    bar.close()
    exit_ = exit_of(draft)
    exit_.load_state_dict(
        {k: v.detach().to(exit_.proj.weight.dtype) for k, v in student.model.norm.state_dict().items()}
    )
    factors = {
        f"{name}.{part}": getattr(a, part).detach().to(FACTORS_DTYPE)
        for name, a in adapters.items()
        for part in "ab"
    }
    if factors:
        merge_updates(layers, factors)
    window = max(1, min(20, len(losses) // 4))
    record = {
        "steps": step,
        "seconds": time.perf_counter() - start,
        "rank": rank,
        "loss_first": sum(losses[:window]) / window,
        "loss_last": sum(losses[-window:]) / window,
        "top1_agreement_last": sum(agree[-window:]) / window,
    }
    return record, factors


def _padded(batch: Sequence[DistillText]) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] token ids and attention mask of ``batch``, right-padded."""
    width = max(len(t.ids) for t in batch)
    tokens = torch.zeros(len(batch), width, dtype=torch.long)
    seen = torch.zeros(len(batch), width, dtype=torch.long)
    for i, t in enumerate(batch):
        tokens[i, : len(t.ids)] = torch.tensor(t.ids)
        seen[i, : len(t.ids)] = 1
    return tokens, seen


def distillation_texts(
    target: LoadedModel, count: int, max_tokens: int = 128, seed: int = 0
) -> list[list[int]]:
    """Token id sequences to distil on: Python-docs paragraphs and standard-library functions, half of
    them as chat turns (the draft writes answers), cut to ``max_tokens``."""
    from ppdecode.train.sources import python_docs_prompts, python_stdlib_prompts

    rng = random.Random(seed)
    prompts = python_docs_prompts(rng) + python_stdlib_prompts(rng)
    rng.shuffle(prompts)
    texts = []
    for i, prompt in enumerate(prompts[:count]):
        if i % 2 and target.is_chat:
            messages = [
                {"role": "user", "content": "Explain this."},
                {"role": "assistant", "content": prompt.text},
            ]
            text = target.tokenizer.apply_chat_template(messages, tokenize=False)
            ids = target.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = target.tokenizer(prompt.text)["input_ids"]
        if len(ids) >= 8:
            texts.append(list(ids[:max_tokens]))
    return texts


def dataset_texts(
    target: LoadedModel, path: str | Path, max_tokens: int = 320
) -> tuple[list[DistillText], list[DistillText]]:
    """(train, held-out) sequences of a self-distillation dataset of the target (``ppd data`` with the
    target as its model or its writer): each prompt with the target's own greedy answer, learnt on the
    answer, cut to ``max_tokens``."""
    from ppdecode.train.data import HELDOUT, load_dataset

    dataset = load_dataset(path)
    writer = dataset.header.get("writer") or dataset.header.get("base_model")
    if writer != target.name:
        raise ValueError(
            f"the dataset {path} holds the answers of {writer!r}, not of {target.name!r}: build one with "
            f"`ppd data --model {target.name}` (or `--writer {target.name}`)"
        )
    train: list[DistillText] = []
    held: list[DistillText] = []
    for sample in dataset.samples:
        ids = (sample.prompt_ids + sample.response_ids)[-max_tokens:]
        first = max(0, len(ids) - len(sample.response_ids) - 1)
        (held if sample.split == HELDOUT else train).append(DistillText(ids, first))
    if not train or not held:
        raise ValueError(
            f"the dataset {path} needs both train and held-out answers ({len(train)} and {len(held)}); "
            "build it with more prompts (`ppd data --source self-instruct:300 ...`)"
        )
    return train, held


def shortlist(counts: Counter[int], size: int, vocab: int) -> torch.Tensor:
    """The ``size`` most frequent token ids, topped up with the lowest ids (BPE's earliest merges)."""
    ids = [token for token, _ in counts.most_common(size)]
    seen = set(ids)
    ids += [t for t in range(vocab) if t not in seen][: size - len(ids)]
    return torch.tensor(sorted(ids[:size]), dtype=torch.long)


def make_draft(
    name: str,
    seconds: float,
    out: Path | None = None,
    dataset: str | Path | None = None,
    rank: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Cut the draft ``name`` from its target, train it for about ``seconds`` and store it.

    It learns on Python-docs paragraphs and standard-library code, and with ``dataset`` (a
    self-distillation dataset of the target, ``ppd data``) on the target's own answers too, what the
    draft guesses while decoding: as many answers as paragraphs are drawn, and agreement is counted
    on its held-out answers. The shortlist counts the tokens of both. ``rank``: of the updates of the
    draft's layers (default: the spec's; 0 trains the exit alone and shares the target's layers).
    """
    spec = DRAFTS[name]
    rank = spec.rank if rank is None else rank
    if rank < 0:
        raise ValueError(f"the rank of the layers' updates is 0 (none) or more, got {rank}")
    target = load_model(spec.target, device="cpu", dtype="bfloat16")
    docs: list[DistillText] = [DistillText(ids) for ids in distillation_texts(target, 1200)]
    if dataset is not None:
        answers, held = dataset_texts(target, dataset)
        train_texts = docs + answers * max(1, round(len(docs) / len(answers)))
        distinct = len(docs) + len(answers)
    else:
        held, train_texts = docs[:64], docs[64:]
        distinct = len(train_texts)
    vocab = target.model.get_output_embeddings().weight.shape[0]
    ids = shortlist(token_frequencies(target, train_texts), spec.shortlist, vocab)
    draft = cut_draft(target, spec.layers, ids, name, own_layers=rank > 0)
    record, factors = train_draft(target, draft, train_texts, seconds, rank=rank, progress=progress)
    record.update(layers=spec.layers, shortlist=spec.shortlist, texts=distinct)
    record["target"] = spec.target
    record["data"] = str(dataset) if dataset is not None else "python-docs, python-stdlib"
    record["heldout_top1_agreement"] = agreement(target, draft, held)
    if dataset is not None:
        record["docs_top1_agreement"] = agreement(target, draft, docs[:64])
    path = out or PACKAGED / f"{name}.safetensors"
    save_draft(draft, path, record, factors)
    record["path"] = str(path)
    return record


@torch.inference_mode()
def agreement(target: LoadedModel, draft: LoadedModel, texts: Sequence[list[int] | DistillText]) -> float:
    """Share of positions (from each text's ``first`` on) where the draft's argmax equals the
    target's, with teacher forcing."""
    same = total = 0
    for text in map(_as_text, texts):
        tokens = torch.tensor([text.ids], device=target.device)
        expected = target.model(input_ids=tokens).logits[0, text.first :].argmax(-1)
        got = draft.model(input_ids=tokens).logits[0, text.first :].argmax(-1)
        same += int((expected == got).sum())
        total += len(expected)
    return same / max(total, 1)
