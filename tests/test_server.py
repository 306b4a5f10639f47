"""The server on the real default model (float32, so that greedy output is exact): the official
client's replies equal ``engine.generate``, plain and streamed, chat and completion; a bounded load
test with 32 concurrent streams; /metrics agrees with the responses' statistics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from ppdecode import load  # noqa: E402
from ppdecode.engine import Engine, GenerationResult  # noqa: E402
from ppdecode.server import ServerConfig, create_app  # noqa: E402
from ppdecode.server.loadtest import run_load  # noqa: E402
from ppdecode.server.runner import BackgroundServer  # noqa: E402
from tests.helpers import PROMPTS  # noqa: E402

pytestmark = pytest.mark.slow

MAX_TOKENS = 16
LOAD_PROMPTS = PROMPTS[:8]  # the load test sends each 4 times: 32 streams
COMPLETION_PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def engine() -> Engine:
    # a short cache: these prompts and replies are short, and the machine may be shared
    return load(device="cpu", dtype="float32", tree="default", max_batch=8, max_length=1024)


@pytest.fixture(scope="module")
def references(engine: Engine) -> dict[tuple[bool, str], GenerationResult]:
    """One request at a time, before the server owns the engine: (chat, prompt) -> greedy result."""
    refs = {(True, p): engine.generate(p, max_new_tokens=MAX_TOKENS, temperature=0.0) for p in LOAD_PROMPTS}
    refs[(False, COMPLETION_PROMPT)] = engine.generate(
        COMPLETION_PROMPT, max_new_tokens=MAX_TOKENS, temperature=0.0, chat=False
    )
    return refs


@pytest.fixture(scope="module")
def server(engine: Engine, references: dict) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(engine, ServerConfig(max_queue=32))) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def counters(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.endswith("_total")
    }


def test_models_and_health(server: BackgroundServer, client: openai.OpenAI, engine: Engine) -> None:
    assert [m.id for m in client.models.list().data] == [engine.base.name]
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "ppd-toggle" in page.text


def test_chat_equals_generate(client: openai.OpenAI, engine: Engine, references: dict) -> None:
    prompt = LOAD_PROMPTS[0]
    ref = references[(True, prompt)]
    messages = [{"role": "user", "content": prompt}]
    out = client.chat.completions.create(
        model=engine.base.name, messages=messages, max_tokens=MAX_TOKENS, temperature=0
    )
    assert out.choices[0].message.content == ref.text
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (
        ref.stats.prompt_tokens,
        len(ref.token_ids),
    )
    ppd = (out.model_extra or {})["ppd"]
    assert ppd["steps"] == len(ppd["accept_lengths"]) and ppd["tau"] > 0

    stream = client.chat.completions.create(
        model=engine.base.name,
        messages=messages,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    steps = [(c.model_extra or {}).get("ppd") for c in chunks]
    origins = [o for s in steps if s and "origins" in s for o in s["origins"]]
    assert len(origins) == len(ref.token_ids) and set(origins) <= {"model", "ppd", "lookup"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(ref.token_ids)


def test_completion_equals_generate(client: openai.OpenAI, engine: Engine, references: dict) -> None:
    ref = references[(False, COMPLETION_PROMPT)]
    kwargs = {
        "model": engine.base.name,
        "prompt": COMPLETION_PROMPT,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    out = client.completions.create(**kwargs)
    assert out.choices[0].text == ref.text and out.choices[0].finish_reason == "length"
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(**kwargs, stream=True) if c.choices
    )
    assert streamed == ref.text


def test_vanilla_switch_gives_the_same_greedy_text(
    client: openai.OpenAI, engine: Engine, references: dict
) -> None:
    prompt = LOAD_PROMPTS[1]
    out = client.chat.completions.create(
        model=engine.base.name,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"ppd": False},
    )
    assert out.choices[0].message.content == references[(True, prompt)].text
    ppd = (out.model_extra or {})["ppd"]
    assert set(ppd["accept_lengths"]) == {1} and ppd["draft_tokens"] == 0


def test_load_32_concurrent_streams_and_metrics(server: BackgroundServer, references: dict) -> None:
    before = counters(server.url)
    prompts = [p for p in LOAD_PROMPTS for _ in range(4)]
    run = asyncio.run(run_load(server.url, prompts, concurrency=32, max_tokens=MAX_TOKENS))
    assert len(run.records) == 32
    for record in run.records:  # batched greedy output equals one-at-a-time output (float32)
        assert record.text == references[(True, record.prompt)].text, record.prompt
        assert record.finish_reason in ("stop", "length")
    after = counters(server.url)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    records = run.records
    finished = sum(
        delta("ppd:num_requests_total", finish_reason=r) for r in ("eos", "stop", "length", "context")
    )
    assert finished == 32
    assert delta("ppd:prompt_tokens_total") == sum(r.usage["prompt_tokens"] for r in records)
    assert delta("ppd:generation_tokens_total") == sum(r.completion_tokens for r in records)
    assert delta("ppd:spec_decode_num_drafts_total") == sum(r.ppd["steps"] for r in records)
    assert delta("ppd:spec_decode_num_draft_tokens_total") == sum(r.ppd["draft_tokens"] for r in records)
    accepted = [sum(r.ppd["accepted_per_position"]) for r in records]
    assert delta("ppd:spec_decode_num_accepted_tokens_total") == sum(accepted) > 0
    depth = max(len(r.ppd["accepted_per_position"]) for r in records)
    for position in range(depth):
        expected = sum(
            r.ppd["accepted_per_position"][position]
            for r in records
            if position < len(r.ppd["accepted_per_position"])
        )
        assert delta("ppd:spec_decode_num_accepted_tokens_per_pos_total", position=str(position)) == expected
    assert httpx.get(f"{server.url}/health").json()["running"] == 0


def test_a_server_with_a_draft_writing_with_ppd_answers_as_vanilla(references: dict) -> None:
    """`ppd serve --draft default --draft-ppd --prompt-tokens none`: concurrent requests share the
    draft's engine, batched, and their replies equal vanilla greedy, with the draft's tokens accepted."""
    engine = load(
        device="cpu",
        dtype="float32",
        prompt_tokens=None,
        draft="default",
        draft_ppd=True,
        tune=False,
        max_batch=8,
        max_length=1024,
    )
    with BackgroundServer(create_app(engine, ServerConfig(max_queue=8))) as running:
        run = asyncio.run(run_load(running.url, LOAD_PROMPTS, concurrency=8, max_tokens=MAX_TOKENS))
    assert len(run.records) == len(LOAD_PROMPTS)
    for record in run.records:
        assert record.text == references[(True, record.prompt)].text, record.prompt
    assert sum(sum(r.ppd["accepted_per_position"]) for r in run.records) > 0
    assert engine.draft is not None and engine.draft.draft_steps > 0
