"""Verification: which guesses of a tree step are accepted, and which token comes next.

Vocabulary (used across the package):
- *token inputs* of a step are the root (input 0) and the candidate nodes (inputs 1..num_nodes);
  ``logits[i]`` is the model's next-token distribution after token input i and its ancestors.
- *accepted* candidates: the longest root-to-node chain whose every candidate passes the rule.
- *bonus* token: the token after the last accepted node; it becomes the next step's root, so each
  step commits ``accepted + 1`` tokens (τ).
All functions are pure: logits in, a ``Verdict`` out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ppdecode.config import AcceptMode, GenerationConfig
from ppdecode.models import LoadedModel
from ppdecode.step import RowPlan, head_logits
from ppdecode.tree.buffers import TreeBuffers


@dataclass(frozen=True)
class Verdict:
    accepted: list[int]  # input indices of the accepted candidate nodes, root excluded, root-to-leaf
    accepted_tokens: list[int]  # their token ids
    bonus: int  # next token (the next step's root)

    @property
    def last(self) -> int:
        """Input index of the last accepted token input (0 = the root)."""
        return self.accepted[-1] if self.accepted else 0


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """[n, V] logits -> [n, V] float32 probabilities after temperature, top-k and top-p filtering."""
    scores = logits.float() / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]  # [n, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_scores.softmax(-1) >= top_p  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(-1)


def _accept_lengths(passes: torch.Tensor, buffers: TreeBuffers) -> torch.Tensor:
    """passes: [num_nodes] per candidate node -> [num_paths] accepted prefix length of each path."""
    flags = torch.zeros(buffers.num_inputs + 1, dtype=torch.long, device=passes.device)
    flags[1 : buffers.num_nodes + 1] = passes
    return flags[buffers.paths.to(passes.device)].cumprod(dim=1).sum(dim=1)


def _best_path(lengths: list[int], buffers: TreeBuffers) -> list[int]:
    """Input indices of the longest accepted chain (the first path among equals)."""
    best = max(range(len(lengths)), key=lambda p: (lengths[p], -p))
    return list(buffers.path_rows[best][: lengths[best]])


def verify_greedy(predicted: list[int], tokens: list[int], buffers: TreeBuffers) -> Verdict:
    """Accept a candidate when it equals the argmax after its parent (lossless at temperature 0).

    predicted: [1 + num_nodes] argmax after each token input; tokens: [1 + num_nodes] their token ids.
    Host lists: the step's one device transfer has already brought them back. Siblings are distinct,
    so the accepted chain is unique.
    """
    best: tuple[int, ...] = ()
    for path in buffers.path_rows:
        parent, length = 0, 0
        for node in path:
            if tokens[node] != predicted[parent]:
                break
            parent, length = node, length + 1
        if length > len(best):
            best = path[:length]
    last = best[-1] if best else 0
    return Verdict(list(best), [tokens[i] for i in best], predicted[last])


def verify_typical(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    buffers: TreeBuffers,
    temperature: float,
    top_k: int,
    top_p: float,
    posterior_threshold: float,
    posterior_alpha: float,
    generator: torch.Generator | None,
) -> Verdict:
    """Medusa's typical acceptance: accept x when p(x) > min(threshold, alpha · exp(-entropy)).

    Fast and usually close to the model's distribution, but not lossless.
    """
    raw = (logits.float() / temperature).softmax(-1)  # [1 + num_nodes, V]
    parent = buffers.parent[1:].to(tokens.device)
    entropy = -(raw * raw.clamp_min(1e-12).log()).sum(-1)  # [1 + num_nodes]
    threshold = torch.minimum(
        torch.full_like(entropy, posterior_threshold), posterior_alpha * torch.exp(-entropy)
    )
    passes = raw[parent, tokens[1:]] > threshold[parent]  # [num_nodes]
    accepted = _best_path(_accept_lengths(passes, buffers).tolist(), buffers) if buffers.num_nodes else []
    accepted_tokens = tokens[accepted].tolist() if accepted else []
    last = accepted[-1] if accepted else 0
    probs = sampling_probs(logits[last : last + 1], temperature, top_k, top_p)[0]
    bonus = int(torch.multinomial(probs.cpu(), 1, generator=generator))
    return Verdict(accepted, accepted_tokens, bonus)


def verify_lossless(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    buffers: TreeBuffers,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> Verdict:
    """Lossless sampling with deterministic candidates (METHOD §3, last paragraph).

    At a node, try its children in rank order: accept child x with probability p(x) / (mass left),
    where rejected siblings have been removed from p; if every child is rejected, sample the bonus
    token from what is left. Each committed token is then distributed exactly as p.
    """
    probs = sampling_probs(logits, temperature, top_k, top_p)  # [1 + num_nodes, V]
    parent = buffers.parent[1:].to(tokens.device)
    child_p = probs[parent, tokens[1:]]  # [num_nodes] p(x) of each candidate under its parent
    uniforms = torch.rand(buffers.num_nodes, generator=generator, device="cpu").tolist()
    child_p_host = child_p.tolist()
    tokens_host = tokens.tolist()
    node, accepted = 0, []
    rejected: list[int] = []
    while True:
        left = 1.0
        rejected = []
        chosen = None
        for child in buffers.children[node]:
            p = child_p_host[child - 1]
            if left > 0 and uniforms[child - 1] * left < p:
                chosen = child
                break
            left -= p
            rejected.append(tokens_host[child])
        if chosen is None:
            break
        accepted.append(chosen)
        node = chosen
    residual = probs[node]
    if rejected:
        residual = residual.clone()
        residual[rejected] = 0.0
        if float(residual.sum()) <= 0:  # every token with mass was tried and rejected: rounding only
            residual = probs[node]
    bonus = int(torch.multinomial(residual.cpu(), 1, generator=generator))
    return Verdict(accepted, [tokens_host[i] for i in accepted], bonus)


@dataclass(frozen=True)
class RowVerdict:
    """A row's verdict and the prompt tokens' candidates for its next step."""

    verdict: Verdict
    ranked: list[list[int]] | None  # [slots of the last accepted node][top_k], None without slots


HEAD_SLICE = 16  # rows of logits [HEAD_SLICE, vocab] that exist at once while a step is verified


def greedy_tokens(base: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """[n, H] final hidden states -> [n] argmax tokens, the output layer run on slices of rows."""
    return head_outputs(base, hidden, torch.empty(0, 1, hidden.shape[-1], dtype=hidden.dtype), 1)[0]


def head_outputs(
    base: LoadedModel, tokens: torch.Tensor, groups: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output layer where verification needs it, in one pass over the weights.

    tokens: [T, H] hidden states of token inputs -> [T] argmax after each;
    groups: [G, V, H] hidden states of the slot groups' members -> [G, k] top-k of their mean logits.
    Both kinds go through the output layer together, ``HEAD_SLICE`` rows at a time (a group never split):
    on a CPU the layer's cost is reading its weight, once per call whatever the rows.
    """
    g, v, width = groups.shape
    rows = torch.cat([tokens, groups.reshape(g * v, width)])  # [T + G * V, H]
    num_tokens = tokens.shape[0]
    argmax: list[torch.Tensor] = []
    top: list[torch.Tensor] = []
    for start, end in _head_slices(num_tokens, g, v):
        logits = head_logits(base, rows[start:end])  # [end - start, vocab]
        split = max(0, min(end, num_tokens) - start)  # the slice's token rows come first
        # max(...).indices, not argmax: on a CPU, argmax over bf16 rows is several times slower
        argmax.append(logits[:split].max(dim=-1).indices)
        if end > num_tokens:
            scores = logits[split:]  # [groups * V, vocab]
            if v > 1:  # an ensemble's mean, accumulated in float32
                scores = scores.float().reshape(-1, v, scores.shape[-1]).mean(dim=1)  # [groups, vocab]
            top.append(scores.topk(min(k, scores.shape[-1]), dim=-1).indices)
    if not top:
        top.append(torch.empty(0, k, dtype=torch.long, device=rows.device))
    return torch.cat(argmax), torch.cat(top)


def _head_slices(num_tokens: int, num_groups: int, members: int) -> list[tuple[int, int]]:
    """Row ranges of at most ``HEAD_SLICE`` rows (one group at least) over T token rows, then G groups."""
    units = [1] * num_tokens + [members] * num_groups  # rows of each token input, then of each group
    slices: list[tuple[int, int]] = []
    start = i = 0
    while i < len(units):
        end = start + units[i]
        i += 1
        while i < len(units) and end + units[i] - start <= HEAD_SLICE:
            end += units[i]
            i += 1
        slices.append((start, end))
        start = end
    return slices


def batch_verdicts(
    base: LoadedModel,
    hidden: torch.Tensor,  # [B, C, H] final hidden states of columns logits_from .. W - 1 of each row
    plans: list[RowPlan],
    logits_from: int,
    configs: list[GenerationConfig],
    generators: list[torch.Generator],
    top_k: int,
) -> list[RowVerdict]:
    """Verify every row of a step; greedy rows need one host transfer for the whole batch.

    The argmax after every token input and the top-k of every prompt-slot group (the mean over
    ensemble members) come back together, so the next step's candidates are known whichever node
    wins. Logits are made from the hidden states where they are needed, once per input and a slice
    of rows at a time; a sampled row gets the full logits of its token inputs.
    """
    b, c, width = hidden.shape
    flat = hidden.reshape(b * c, width)
    token_index: list[int] = []  # flat rows of every row's token inputs, row by row
    group_index: list[list[int]] = []  # [G][V] flat rows of each slot group, row by row
    first_token: list[int] = []  # per row: its first token input in token_index
    first_group: list[int] = []  # per row: its first group
    for row, plan in enumerate(plans):
        offset = row * c + len(plan.prefix) - logits_from
        first_token.append(len(token_index))
        token_index.extend(range(offset, offset + len(plan.tokens)))
        first_group.append(len(group_index))
        group_index.extend([offset + i for i in group] for group in plan.buffers.slot_groups)
    rows = torch.tensor(token_index, device=hidden.device)
    members = len(group_index[0]) if group_index else 1
    index = torch.tensor(group_index, dtype=torch.long, device=hidden.device).reshape(-1, members)  # [G, V]
    predicted, top = head_outputs(base, flat[rows], flat[index], top_k)  # [T], [G, k]
    host = torch.cat([predicted, top.flatten()]).tolist()  # the step's one transfer for greedy rows
    predicted_all, topk_all = host[: len(token_index)], host[len(token_index) :]
    out: list[RowVerdict] = []
    for row, plan in enumerate(plans):
        buffers = plan.buffers
        column = len(plan.prefix) - logits_from
        tokens = list(plan.tokens)
        mode = configs[row].accept_mode
        if mode is AcceptMode.GREEDY:
            start = first_token[row]
            verdict = verify_greedy(predicted_all[start : start + len(tokens)], tokens, buffers)
        else:
            config = configs[row]
            row_logits = head_logits(base, hidden[row, column : column + len(tokens)])  # [1 + nodes, vocab]
            token_tensor = torch.tensor(tokens, device=hidden.device)
            if mode is AcceptMode.TYPICAL:
                verdict = verify_typical(
                    row_logits, token_tensor, buffers, config.temperature, config.top_k, config.top_p,
                    config.posterior_threshold, config.posterior_alpha, generators[row],
                )
            else:
                verdict = verify_lossless(
                    row_logits, token_tensor, buffers, config.temperature, config.top_k, config.top_p,
                    generators[row],
                )
        slots = buffers.node_slots[verdict.last]
        ranked = None
        if slots:
            g = first_group[row] + buffers.first_group[verdict.last]
            k = len(topk_all) // len(group_index)
            ranked = [topk_all[(g + j) * k : (g + j + 1) * k] for j in range(slots)]
        out.append(RowVerdict(verdict, ranked))
    return out
