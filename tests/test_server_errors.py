"""The HTTP server refuses bad requests with the right status and an OpenAI-style error, and keeps
serving: run on loopback over the stand-in engine (no model), with the official client and raw HTTP."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from ppdecode.server import ServerConfig, create_app  # noqa: E402
from ppdecode.server.runner import BackgroundServer  # noqa: E402
from tests.test_server_unit import FakeEngine, fake_reply  # noqa: E402

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONFIG = ServerConfig(api_key=KEY, max_queue=1, max_body_bytes=4096, max_tokens=64, default_max_tokens=8)


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(FakeEngine(max_batch=2, step_s=0.02), CONFIG)) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def chat(content: str = "hello", **fields: object) -> dict:
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **fields}


def assert_serving(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json=chat("still there?", max_tokens=4), headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == fake_reply("still there?", 4)


def metric(http: httpx.Client, name: str) -> float:
    total = 0.0
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_official_client_plain_and_streaming(server: BackgroundServer) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["fake-model"]
    out = client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "abc"}], max_tokens=5
    )
    assert out.choices[0].message.content == fake_reply("abc", 5)
    assert (
        out.usage is not None
        and out.usage.completion_tokens == 5
        and out.choices[0].finish_reason == "length"
    )
    stream = client.completions.create(
        model="fake-model", prompt="xyz", max_tokens=7, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == fake_reply("xyz", 7)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


def test_stream_ends_with_done_and_carries_ppd_steps(http: httpx.Client) -> None:
    with http.stream(
        "POST", "/v1/chat/completions", json=chat("abcd", max_tokens=4, stream=True), headers=AUTH
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    bodies = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    steps = [b["ppd"] for b in bodies if b["ppd"] and "origins" in b["ppd"]]
    assert steps and all(s["origins"] == ["ppd", "model"] and s["pieces"] for s in steps)
    assert bodies[-1]["choices"][0]["finish_reason"] == "length" and bodies[-1]["ppd"]["tau"] == 2.0


BAD = [
    ("malformed JSON", b'{"messages": [', 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("messages not a list", json.dumps({"messages": "hi"}).encode(), 400, "messages"),
    ("empty messages", json.dumps({"messages": []}).encode(), 400, "messages"),
    (
        "bad role",
        json.dumps(chat() | {"messages": [{"role": "robot", "content": "x"}]}).encode(),
        400,
        "messages.0.role",
    ),
    ("max_tokens a word", json.dumps(chat(max_tokens="many")).encode(), 400, "max_tokens"),
    ("max_tokens 0", json.dumps(chat(max_tokens=0)).encode(), 400, "max_tokens"),
    ("max_tokens over the cap", json.dumps(chat(max_tokens=65)).encode(), 400, "max_tokens"),
    ("temperature too high", json.dumps(chat(temperature=5)).encode(), 400, "temperature"),
    ("n = 2", json.dumps(chat(n=2)).encode(), 400, "n"),
    ("unknown model", json.dumps(chat() | {"model": "../../etc/passwd"}).encode(), 404, "model"),
    ("prompt over the context", json.dumps(chat("y" * 600)).encode(), 400, "messages"),
    ("body over the cap", json.dumps(chat("z" * 5000)).encode(), 413, None),
]


@pytest.mark.parametrize(("why", "body", "status", "param"), BAD, ids=[b[0] for b in BAD])
def test_bad_request_gets_openai_error(
    http: httpx.Client, why: str, body: bytes, status: int, param: str | None
) -> None:
    resp = http.post(
        "/v1/chat/completions", content=body, headers=AUTH | {"Content-Type": "application/json"}
    )
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    assert_serving(http)


def test_chunked_body_over_the_cap(http: httpx.Client) -> None:
    def pieces() -> Iterator[bytes]:  # no Content-Length: the guard counts what arrives
        for _ in range(10):
            yield b" " * 1000

    resp = http.post("/v1/completions", content=pieces(), headers=AUTH)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
    assert_serving(http)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}])
def test_api_key_required_on_v1(http: httpx.Client, headers: dict[str, str]) -> None:
    for resp in (
        http.get("/v1/models", headers=headers),
        http.post("/v1/chat/completions", json=chat(), headers=headers),
    ):
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    assert http.get("/health").status_code == 200 and http.get("/metrics").status_code == 200
    assert_serving(http)


def test_unknown_route_and_model(http: httpx.Client) -> None:
    resp = http.get("/v1/nothing", headers=AUTH)
    assert resp.status_code == 404 and "error" in resp.json()
    assert http.get("/v1/models/fake-model", headers=AUTH).json()["id"] == "fake-model"
    assert http.get("/v1/models/other", headers=AUTH).json()["error"]["code"] == "model_not_found"


def test_queue_overflow_is_refused_then_recovers(server: BackgroundServer, http: httpx.Client) -> None:
    # capacity = max_batch 2 + max_queue 1: three long streams fill it, the fourth request is refused
    streams = []
    try:
        for i in range(3):
            request = http.build_request(
                "POST",
                "/v1/completions",
                headers=AUTH,
                json={"prompt": f"long {i}", "max_tokens": 64, "stream": True},
            )
            response = http.send(request, stream=True)
            assert response.status_code == 200
            streams.append(response)
        refused = http.post("/v1/completions", json={"prompt": "one more", "max_tokens": 2}, headers=AUTH)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "queue_full" and refused.headers["retry-after"]
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model="fake-model", prompt="again", max_tokens=2)
    finally:
        for response in streams:
            response.close()
    wait_for(lambda: http.get("/health").json()["running"] == 0)
    assert_serving(http)


def wait_for(condition, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_client_disconnect_frees_the_row(server: BackgroundServer, http: httpx.Client) -> None:
    cancelled = 'ppd:num_requests_total{finish_reason="cancelled"}'
    before = metric(http, cancelled)
    # mid-stream
    with http.stream(
        "POST", "/v1/completions", headers=AUTH, json={"prompt": "drop me", "max_tokens": 64, "stream": True}
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    wait_for(lambda: metric(http, cancelled) == before + 1)
    # while waiting for a whole (non-streamed) answer
    body = json.dumps({"prompt": "drop me too", "max_tokens": 64}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(head + body)
        time.sleep(0.2)
    wait_for(lambda: metric(http, cancelled) == before + 2)
    assert metric(http, "ppd:num_requests_running") == 0
    assert_serving(http)
