"""The OpenAI wire format: request schemas, their mapping onto ``GenerationConfig``, response bodies.

Requests are validated here and nowhere else; an invalid one becomes an ``APIError`` whose body is
OpenAI's ``{"error": {"message", "type", "param", "code"}}``. Responses carry one field OpenAI does
not have, ``ppd``: on a whole response (and on the last chunk of a stream) the generation's
statistics (``PPDStats``), on every other stream chunk what that step committed (``PPDStep``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ppdecode.config import GenerationConfig
from ppdecode.engine import GenerationResult, GenerationStats, StreamChunk

# The engine's finish reasons as OpenAI names them; a cancelled request has no client left to read
# it, "abort" is what vLLM reports in its logs and metrics for the same case.
FINISH_REASONS = {
    "eos": "stop",
    "stop": "stop",
    "length": "length",
    "context": "length",
    "cancelled": "abort",
}
MAX_STOP_SEQUENCES = 4  # as OpenAI


class APIError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def validation_error(err: ValidationError | list[Any]) -> APIError:
    """The first problem of a pydantic (or FastAPI) validation failure as a 400."""
    errors = err.errors() if isinstance(err, ValidationError) else err
    if not errors:
        return APIError(400, "the request body is invalid")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return APIError(
            400, f"the request body is not valid JSON: {first.get('msg', '')}", code="json_invalid"
        )
    param = ".".join(loc) or None
    where = f" at {param}" if param else ""
    return APIError(400, f"{first.get('msg', 'invalid value')}{where}", param=param, code="invalid_value")


# ---- requests -------------------------------------------------------------------------------------
class _Request(BaseModel):
    # Fields other clients send and this server does not use (user, logit_bias, ...) are ignored, as
    # OpenAI-compatible servers commonly do; the ones that would change the answer are refused below.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class SamplingRequest(_Request):
    """What completions and chat completions share."""

    model: str | None = None  # None: the served model
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # OpenAI's default; 0 = greedy (lossless)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # not OpenAI's, as in vLLM: 0 = off
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool | int | None = None  # refused: chat sends a bool, completions a count
    ppd: bool = True  # not OpenAI's: False decodes without guesses (vanilla), for comparison
    lookup: bool = True  # not OpenAI's: False leaves prompt lookup out of the guesses

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise APIError(
                400, "give one prompt per request (a list holding exactly one string)", param="prompt"
            )
        return self.prompt[0]


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_dict(self) -> dict[str, str]:
        content = self.content or ""
        text = content if isinstance(content, str) else "".join(part.text for part in content)
        # chat templates know "system"; OpenAI's newer "developer" role means the same
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None


@dataclass(frozen=True)
class Limits:
    """The caps a request is checked against (``ServerConfig`` fills them)."""

    max_tokens: int
    default_max_tokens: int


def generation_config(req: SamplingRequest, limits: Limits) -> GenerationConfig:
    """The engine's settings for a request; every refusal names the offending parameter."""
    if req.n != 1:
        raise APIError(400, f"n must be 1 (one choice per request), got {req.n}", param="n")
    if req.presence_penalty or req.frequency_penalty:
        raise APIError(
            400,
            "presence_penalty and frequency_penalty are not supported; leave them at 0",
            param="presence_penalty" if req.presence_penalty else "frequency_penalty",
        )
    if req.logprobs:
        raise APIError(400, "logprobs are not supported", param="logprobs")
    if isinstance(req, CompletionRequest) and (req.echo or req.suffix):
        raise APIError(400, "echo and suffix are not supported", param="echo" if req.echo else "suffix")
    param, max_tokens = "max_tokens", req.max_tokens
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        param, max_tokens = "max_completion_tokens", req.max_completion_tokens
    if max_tokens is None:
        max_tokens = limits.default_max_tokens
    if not 1 <= max_tokens <= limits.max_tokens:
        raise APIError(
            400, f"{param} must be between 1 and {limits.max_tokens}, got {max_tokens}", param=param
        )
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > MAX_STOP_SEQUENCES:
        raise APIError(400, f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stop)}", param="stop")
    try:
        return GenerationConfig(
            max_new_tokens=max_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            seed=req.seed,
            stop=stop,
            chat=isinstance(req, ChatCompletionRequest),
            use_ppd=req.ppd,
            lookup=req.lookup,
        )
    except ValueError as err:
        raise APIError(400, str(err)) from err


# ---- responses --------------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class PPDStats(BaseModel):
    """A generation's decoding statistics; τ = tokens committed per forward pass (vanilla: 1)."""

    tau: float
    tokens_per_s: float
    steps: int
    accept_lengths: list[int]
    draft_tokens: int
    accepted_per_position: list[int]


class PPDStep(BaseModel):
    """What one step committed for a streamed request: ``origins[i]`` says where token i came from
    ("model", "ppd" or "lookup"); ``pieces[i]`` is its text when the chunk's text splits exactly into
    the tokens' texts (None when it does not, e.g. text held back by a stop string)."""

    accept_length: int
    origins: list[str]
    pieces: list[str] | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: str


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: str | None = None


class _Response(BaseModel):
    id: str
    created: int
    model: str


class CompletionResponse(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None
    ppd: PPDStats | PPDStep | None = None


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage
    ppd: PPDStats


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    ppd: PPDStats | PPDStep | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ppdecode"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


@dataclass(frozen=True)
class Reply:
    """The response side of one request: the bodies of a whole response and of its stream's chunks."""

    chat: bool  # chat.completion(.chunk) bodies; False: text_completion
    id: str
    model: str
    created: int

    def whole(self, result: GenerationResult) -> ChatCompletionResponse | CompletionResponse:
        reason = openai_finish_reason(result.finish_reason)
        if self.chat:
            message = ChatMessageOut(content=result.text)
            return ChatCompletionResponse(
                **self._head(),
                choices=[ChatChoice(message=message, finish_reason=reason)],
                usage=usage(result.stats),
                ppd=ppd_stats(result.stats),
            )
        return CompletionResponse(
            **self._head(),
            choices=[CompletionChoice(text=result.text, finish_reason=reason)],
            usage=usage(result.stats),
            ppd=ppd_stats(result.stats),
        )

    def first_chunk(self) -> ChatCompletionChunk | None:
        """Chat streams open with the assistant's role, as OpenAI's do; completions have no opener."""
        if not self.chat:
            return None
        return ChatCompletionChunk(
            **self._head(), choices=[ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))]
        )

    def chunk(self, text: str, step: PPDStep) -> ChatCompletionChunk | CompletionResponse:
        if self.chat:
            return ChatCompletionChunk(
                **self._head(), choices=[ChatChunkChoice(delta=ChatDelta(content=text))], ppd=step
            )
        return CompletionResponse(**self._head(), choices=[CompletionChoice(text=text)], ppd=step)

    def last_chunk(self, result: GenerationResult) -> ChatCompletionChunk | CompletionResponse:
        """The chunk with the finish reason and the whole generation's statistics."""
        reason = openai_finish_reason(result.finish_reason)
        if self.chat:
            choice = ChatChunkChoice(delta=ChatDelta(), finish_reason=reason)
            return ChatCompletionChunk(**self._head(), choices=[choice], ppd=ppd_stats(result.stats))
        choice_text = CompletionChoice(text="", finish_reason=reason)
        return CompletionResponse(**self._head(), choices=[choice_text], ppd=ppd_stats(result.stats))

    def usage_chunk(self, result: GenerationResult) -> ChatCompletionChunk | CompletionResponse:
        """Sent last when the client asked for ``stream_options.include_usage`` (no choices, as OpenAI)."""
        if self.chat:
            return ChatCompletionChunk(**self._head(), choices=[], usage=usage(result.stats))
        return CompletionResponse(**self._head(), choices=[], usage=usage(result.stats))

    def _head(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "model": self.model}


def usage(stats: GenerationStats) -> Usage:
    return Usage(
        prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.new_tokens,
        total_tokens=stats.prompt_tokens + stats.new_tokens,
    )


def ppd_stats(stats: GenerationStats) -> PPDStats:
    return PPDStats(
        tau=stats.tau,
        tokens_per_s=stats.tokens_per_s,
        steps=stats.steps,
        accept_lengths=list(stats.accept_lengths),
        draft_tokens=stats.draft_tokens,
        accepted_per_position=list(stats.accepted_per_position),
    )


def ppd_step(chunk: StreamChunk, pieces: list[str] | None) -> PPDStep:
    return PPDStep(accept_length=chunk.accept_length, origins=list(chunk.origins), pieces=pieces)


def token_pieces(tokenizer: Any, chunk: StreamChunk) -> list[str] | None:
    """Each token's own text, if together they are exactly the chunk's text (for highlighting)."""
    if not chunk.token_ids:
        return None
    pieces = [tokenizer.decode([token], skip_special_tokens=True) for token in chunk.token_ids]
    return pieces if "".join(pieces) == chunk.text else None


def openai_finish_reason(reason: str) -> str:
    return FINISH_REASONS.get(reason, "stop")


def sse(payload: BaseModel | dict[str, Any]) -> bytes:
    """One server-sent event (``data: <json>`` and a blank line)."""
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


def now() -> int:
    return int(time.time())
