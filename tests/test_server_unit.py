"""The server's pure parts and its scheduler, without a model: protocol mapping, SSE bodies, metrics,
and the scheduler thread driving a stand-in engine (admission, failures, cancellation, the bound)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from ppdecode.config import GenerationConfig  # noqa: E402
from ppdecode.engine import GenerationResult, GenerationStats, RequestOutput, StreamChunk  # noqa: E402
from ppdecode.server.metrics import ServerMetrics  # noqa: E402
from ppdecode.server.protocol import (  # noqa: E402
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    Limits,
    Reply,
    generation_config,
    ppd_step,
    sse,
    token_pieces,
    validation_error,
)
from ppdecode.server.scheduler import Admitted, Event, Failed, Output, QueueFull, Scheduler, Ticket  # noqa: E402


# ---- a stand-in engine ----------------------------------------------------------------------------
class CharTokenizer:
    """Token id = code point; decoding is exact per token, so chunks split into pieces."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids)


@dataclass
class _FakeRequest:
    rid: str
    prompt: list[int]
    config: GenerationConfig
    out: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    cancelled: bool = False


class FakeEngine:
    """The engine's request API over a trivial "model": each step commits two tokens per row, the
    prompt's characters read backwards (one as an accepted "ppd" guess, then the "model" token).

    A prompt containing "BOOM" makes ``step`` raise; ``step_s`` slows steps down (disconnect and
    queue tests); ``max_batch`` rows run at once, the rest wait.
    """

    def __init__(self, max_batch: int = 4, step_s: float = 0.0, context_length: int = 512) -> None:
        self.base = SimpleNamespace(name="fake-model", context_length=context_length)
        self.tokenizer = CharTokenizer()
        self.max_batch = max_batch
        self.step_s = step_s
        self.waiting: list[_FakeRequest] = []
        self.running: list[_FakeRequest] = []
        self.thread_ids: set[int] = set()  # every thread that called into the engine

    def encode(self, prompt: str | list[dict[str, str]], chat: bool = True) -> list[int]:
        self.thread_ids.add(threading.get_ident())
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        if not text.strip():
            raise ValueError("the prompt is empty")
        return [ord(c) for c in text]

    def add_request(
        self, input_ids: list[int], config: GenerationConfig, request_id: str | None = None
    ) -> str:
        self.thread_ids.add(threading.get_ident())
        if len(input_ids) >= self.base.context_length:
            raise ValueError(f"the prompt has {len(input_ids)} tokens; shorten the prompt")
        assert request_id is not None
        self.waiting.append(
            _FakeRequest(request_id, input_ids, config, stats=GenerationStats(len(input_ids)))
        )
        return request_id

    def cancel(self, request_id: str) -> None:
        for request in self.running + self.waiting:
            if request.rid == request_id:
                request.cancelled = True

    def has_unfinished(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def step(self) -> list[RequestOutput]:
        self.thread_ids.add(threading.get_ident())
        time.sleep(self.step_s)
        outputs = []
        for request in [r for r in self.running + self.waiting if r.cancelled]:
            (self.running if request in self.running else self.waiting).remove(request)
            outputs.append(self._output(request, [], [], "cancelled"))
        while self.waiting and len(self.running) < self.max_batch:
            self.running.append(self.waiting.pop(0))
        if any("BOOM" in "".join(map(chr, r.prompt)) for r in self.running):
            raise RuntimeError("the fake model exploded")
        for request in list(self.running):
            source = request.prompt[::-1]
            room = request.config.max_new_tokens - len(request.out)
            tokens = [source[(len(request.out) + i) % len(source)] for i in range(min(2, room))]
            origins = ["ppd", "model"][-len(tokens) :]
            request.out.extend(tokens)
            stats = request.stats
            stats.steps += 1
            stats.new_tokens = len(request.out)
            stats.accept_lengths.append(len(tokens))
            stats.draft_tokens += 3
            stats.count_accepted(len(tokens) - 1)
            stats.total_s = 0.01 * stats.steps
            done = len(request.out) >= request.config.max_new_tokens
            if done:
                self.running.remove(request)
            outputs.append(self._output(request, tokens, origins, "length" if done else None))
        return outputs

    def _output(
        self, request: _FakeRequest, tokens: list[int], origins: list[str], finish: str | None
    ) -> RequestOutput:
        chunk = StreamChunk("".join(map(chr, tokens)), tokens, len(tokens), origins)
        result = None
        if finish is not None:
            result = GenerationResult(
                "".join(map(chr, request.out)), list(request.out), request.stats, finish
            )
        return RequestOutput(request.rid, chunk, finish is not None, result)


def fake_reply(prompt: str, max_tokens: int) -> str:
    """What FakeEngine answers to a completion of ``prompt``."""
    source = prompt[::-1]
    return "".join(source[i % len(source)] for i in range(max_tokens))


# ---- protocol -------------------------------------------------------------------------------------
LIMITS = Limits(max_tokens=100, default_max_tokens=16)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"max_tokens": 101}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 2}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_refused_settings_name_their_parameter(fields: dict, param: str) -> None:
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **fields)
    with pytest.raises(APIError) as err:
        generation_config(req, LIMITS)
    assert err.value.status == 400 and err.value.param == param


def test_settings_map_onto_generation_config() -> None:
    req = ChatCompletionRequest(
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        max_completion_tokens=7,  # the newer name wins
        temperature=0,
        stop="END",
        seed=3,
        ppd=False,
    )
    config = generation_config(req, LIMITS)
    assert (config.max_new_tokens, config.temperature, config.stop, config.seed) == (7, 0.0, ("END",), 3)
    assert config.chat and not config.use_ppd
    plain = generation_config(CompletionRequest(prompt="x", temperature=0), LIMITS)
    assert not plain.chat and plain.max_new_tokens == LIMITS.default_max_tokens


def test_validation_errors_become_openai_errors() -> None:
    with pytest.raises(Exception) as err:
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": 3}]})
    error = validation_error(err.value)  # type: ignore[arg-type]
    assert error.status == 400 and error.param is not None and error.param.startswith("messages.0.content")
    body = error.body()["error"]
    assert set(body) == {"message", "type", "param", "code"}


def test_stream_bodies_follow_openai_chunks() -> None:
    stats = GenerationStats(
        prompt_tokens=4,
        new_tokens=3,
        steps=2,
        accept_lengths=[2, 1],
        draft_tokens=6,
        accepted_per_position=[1],
        total_s=0.5,
    )
    result = GenerationResult("abc", [97, 98, 99], stats, "eos")
    chat = Reply(chat=True, id="chatcmpl-1", model="m", created=1)
    opener = json.loads(sse(chat.first_chunk()).decode().removeprefix("data: "))  # type: ignore[arg-type]
    assert (
        opener["object"] == "chat.completion.chunk" and opener["choices"][0]["delta"]["role"] == "assistant"
    )
    committed = StreamChunk("ab", [97, 98], 2, ["ppd", "model"])
    step = chat.chunk("ab", ppd_step(committed, token_pieces(CharTokenizer(), committed)))
    body = json.loads(step.model_dump_json())
    assert body["choices"][0]["delta"]["content"] == "ab"
    assert body["ppd"] == {"accept_length": 2, "origins": ["ppd", "model"], "pieces": ["a", "b"]}
    last = json.loads(chat.last_chunk(result).model_dump_json())
    assert last["choices"][0]["finish_reason"] == "stop" and last["ppd"]["tau"] == 1.5
    usage = json.loads(chat.usage_chunk(result).model_dump_json())
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 3,
        "total_tokens": 7,
    }
    whole = json.loads(Reply(chat=False, id="cmpl-1", model="m", created=1).whole(result).model_dump_json())
    assert whole["object"] == "text_completion" and whole["choices"][0]["text"] == "abc"
    assert whole["ppd"]["accept_lengths"] == [2, 1]
    assert sse({"a": 1}) == b'data: {"a": 1}\n\n'


def test_token_pieces_only_when_exact() -> None:
    tok = CharTokenizer()
    assert token_pieces(tok, StreamChunk("ab", [97, 98], 2, ["ppd", "model"])) == ["a", "b"]
    assert token_pieces(tok, StreamChunk("a", [97, 98], 2, ["ppd", "model"])) is None  # held-back text
    assert token_pieces(tok, StreamChunk("", [], 0, [])) is None


# ---- metrics --------------------------------------------------------------------------------------
def samples(metrics: ServerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_a_finished_request() -> None:
    metrics = ServerMetrics()
    stats = GenerationStats(
        prompt_tokens=5,
        new_tokens=7,
        steps=4,
        accept_lengths=[2, 2, 2, 1],
        draft_tokens=20,
        accepted_per_position=[3, 1],
    )
    metrics.observe_finished(GenerationResult("", [], stats, "eos"), 0.1, 0.4)
    got = samples(metrics)
    assert got[("ppd:num_requests_total", (("finish_reason", "eos"),))] == 1
    assert got[("ppd:spec_decode_num_drafts_total", ())] == 4
    assert got[("ppd:spec_decode_num_draft_tokens_total", ())] == 20
    assert got[("ppd:spec_decode_num_accepted_tokens_total", ())] == 4
    assert got[("ppd:spec_decode_num_accepted_tokens_per_pos_total", (("position", "0"),))] == 3
    assert got[("ppd:spec_decode_num_accepted_tokens_per_pos_total", (("position", "1"),))] == 1
    assert got[("ppd:prompt_tokens_total", ())] == 5 and got[("ppd:generation_tokens_total", ())] == 7
    assert ServerMetrics().render() != metrics.render()  # every instance has its own registry


# ---- scheduler ------------------------------------------------------------------------------------
class Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Failed) or (isinstance(event, Output) and event.output.finished):
            self.done.set()

    def text(self) -> str:
        return "".join(e.output.chunk.text for e in self.events if isinstance(e, Output))


def ticket(rid: str, prompt: str, max_tokens: int = 6) -> tuple[Ticket, Collector]:
    sink = Collector()
    config = GenerationConfig(max_new_tokens=max_tokens, chat=False)
    return Ticket(rid, prompt, config, sink, pieces=True), sink


@pytest.fixture
def running() -> tuple[Scheduler, FakeEngine]:
    engine = FakeEngine(max_batch=2)
    scheduler = Scheduler(engine, ServerMetrics(), capacity=8, max_prompt_tokens=100)
    scheduler.start()
    yield scheduler, engine
    scheduler.stop()


def test_scheduler_batches_requests_and_keeps_the_engine_on_one_thread(running) -> None:
    scheduler, engine = running
    tickets = [ticket(f"r{i}", f"prompt {i}", max_tokens=5 + i) for i in range(5)]
    for t, _ in tickets:
        scheduler.submit(t)
    for i, (_, sink) in enumerate(tickets):
        assert sink.done.wait(10)
        assert isinstance(sink.events[0], Admitted)
        assert sink.text() == fake_reply(f"prompt {i}", 5 + i)
        last = sink.events[-1]
        assert isinstance(last, Output) and last.output.result is not None
        assert all(
            e.pieces is not None for e in sink.events[1:] if isinstance(e, Output) and e.output.chunk.text
        )
    assert len(engine.thread_ids) == 1 and threading.get_ident() not in engine.thread_ids
    assert scheduler.in_flight == 0


def test_scheduler_fails_one_request_and_serves_the_next(running) -> None:
    scheduler, _ = running
    long, long_sink = ticket("long", "x" * 101)  # over max_prompt_tokens
    empty, empty_sink = ticket("empty", "   ")
    scheduler.submit(long)
    scheduler.submit(empty)
    for sink in (long_sink, empty_sink):
        assert sink.done.wait(10)
        assert isinstance(sink.events[0], Failed) and sink.events[0].error.status == 400
    boom, boom_sink = ticket("boom", "BOOM")  # the step fails: its rows fail, the loop goes on
    scheduler.submit(boom)
    assert boom_sink.done.wait(10)
    assert isinstance(boom_sink.events[-1], Failed) and boom_sink.events[-1].error.status == 500
    ok, ok_sink = ticket("ok", "fine")
    scheduler.submit(ok)
    assert ok_sink.done.wait(10) and ok_sink.text() == fake_reply("fine", 6)
    assert scheduler.alive and scheduler.in_flight == 0


def test_scheduler_bounds_admission_and_cancels() -> None:
    engine = FakeEngine(max_batch=1, step_s=0.05)
    metrics = ServerMetrics()
    scheduler = Scheduler(engine, metrics, capacity=2, max_prompt_tokens=100)
    scheduler.start()
    try:
        first, first_sink = ticket("a", "abc", max_tokens=1000)
        second, second_sink = ticket("b", "def", max_tokens=1000)
        scheduler.submit(first)
        scheduler.submit(second)
        with pytest.raises(QueueFull):
            scheduler.submit(ticket("c", "ghi")[0])
        deadline = time.monotonic() + 10
        while not (first_sink.events and second_sink.events) and time.monotonic() < deadline:
            time.sleep(0.01)  # cancel once admitted; a ticket cancelled before that just vanishes
        scheduler.cancel("a")
        scheduler.cancel("b")
        for sink in (first_sink, second_sink):
            assert sink.done.wait(10)
            last = sink.events[-1]
            assert isinstance(last, Output) and last.output.result is not None
            assert last.output.result.finish_reason == "cancelled"
        assert scheduler.in_flight == 0
        got = samples(metrics)
        assert got[("ppd:num_requests_rejected_total", ())] == 1
        assert got[("ppd:num_requests_total", (("finish_reason", "cancelled"),))] == 2
    finally:
        scheduler.stop()
