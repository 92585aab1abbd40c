"""Request bodies of KAITO's ``POST /chat`` and OpenAI's ``POST /v1/chat/completions``, checked and typed.

Pure functions: a JSON body in, a :class:`ChatRequest` out, or a :class:`RequestError` naming the field,
the value and what is allowed (the server turns it into a 4xx). Token limits that depend on the prompt
are settled by :func:`sampling_params` once the prompt is tokenized.

KAITO's ``/chat`` answers ``{"Result": text}``; with ``return_full_text`` (KAITO's default, true) the text
starts with the prompt (for ``messages``: the chat template applied to them). Its ``generate_kwargs``
accepts the knobs in ``KAITO_GENERATE_KWARGS``; other keys are rejected by name rather than passed to
``generate`` (where KAITO fails at run time, or ignores them).
OpenAI fields this server cannot honour (``n`` > 1, ``logprobs``, non-zero presence/frequency
penalties, tools) are rejected; fields it has no use for (``user``, ``metadata``, ...) are ignored.
vLLM's extensions ``top_k``, ``repetition_penalty`` and ``min_tokens`` are honoured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inference.model import SamplingParams

KAITO_DEFAULT_MAX_LENGTH = 200  # KAITO's /chat default (total tokens, prompt included)
OPENAI_DEFAULT_MAX_TOKENS = 256
ROLES = ("system", "user", "assistant")
MAX_STOP = 4
KAITO_GENERATE_KWARGS = (
    "max_length",
    "max_new_tokens",
    "min_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
)
_UNSUPPORTED_OPENAI = {
    "tools": "tool calls",
    "tool_choice": "tool calls",
    "functions": "function calls",
    "function_call": "function calls",
    "logit_bias": "logit_bias",
}


class RequestError(ValueError):
    """A request this server refuses; ``status`` is the HTTP code, ``param`` the offending field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Server-wide bounds: the largest completion a request may ask for, and the model's context."""

    max_new_tokens: int
    max_context: int


@dataclass(frozen=True)
class ChatRequest:
    """A checked request: what to feed the model and how to generate."""

    model_id: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    stream: bool = False
    return_full_text: bool = False
    max_new_tokens: int | None = None
    max_length: int | None = None  # KAITO: prompt + completion
    default_max_length: int | None = None  # KAITO's default when neither limit is given
    sampling: dict[str, Any] = field(default_factory=dict)
    stop: tuple[str, ...] = ()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(
    body: Mapping[str, Any], key: str, low: float, high: float, *, low_open: bool = False
) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise RequestError(f"{key} must be a number, got {value!r}", key)
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise RequestError(f"{key} must be in {bracket}{low}, {high}], got {value}", key)
    return float(value)


def _integer(body: Mapping[str, Any], key: str, low: int, high: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(f"{key} must be an integer, got {value!r}", key)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise RequestError(f"{key} must be {bound}, got {value}", key)
    return value


def _boolean(body: Mapping, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"{key} must be true or false, got {value!r}", key)
    return value


def _model(body: Mapping, model_ids: list[str], default_id: str) -> str:
    model = body.get("model")
    if model in (None, ""):
        return default_id
    if not isinstance(model, str):
        raise RequestError(f"model must be a string, got {model!r}", "model")
    if model not in model_ids:
        raise RequestError(
            f"model {model!r} is not served here; GET /v1/models lists: {', '.join(model_ids)}",
            "model",
            status=404,
        )
    return model


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not (
                isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise RequestError(
                    f"{where}[{i}] must be {{'type': 'text', 'text': '...'}} (only text parts are served), "
                    f"got {part!r}",
                    where,
                )
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(f"{where} must be a string or a list of text parts, got {value!r}", where)


def parse_messages(value: Any) -> list[dict[str, str]]:
    """``messages``: a non-empty list of ``{role, content}`` with role system, user or assistant."""
    if not isinstance(value, list):
        raise RequestError(f"messages must be a list of {{role, content}} objects, got {value!r}", "messages")
    if not value:
        raise RequestError("messages is empty: send at least one {role, content} message", "messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise RequestError(f"{where} must be an object with role and content, got {message!r}", where)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role is {role!r}; allowed: {', '.join(ROLES)}", f"{where}.role")
        if "content" not in message:
            raise RequestError(f"{where}.content is missing", f"{where}.content")
        out.append({"role": role, "content": _content(message["content"], f"{where}.content")})
    return out


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise RequestError(f"stop must be a string or a list of strings, got {value!r}", "stop")
    if len(items) > MAX_STOP:
        raise RequestError(f"stop has {len(items)} strings; at most {MAX_STOP}", "stop")
    return tuple(s for s in items if s)


def parse_openai_chat(body: Any, model_ids: list[str], default_id: str) -> ChatRequest:
    """OpenAI's chat completion request (the subset a single-sequence server can honour)."""
    if not isinstance(body, Mapping):
        raise RequestError("the body must be a JSON object")
    for key, what in _UNSUPPORTED_OPENAI.items():
        if body.get(key):
            raise RequestError(f"{key}: {what} are not supported by this server", key)
    if body.get("logprobs") or body.get("top_logprobs"):
        raise RequestError("logprobs are not supported by this server", "logprobs")
    _integer(body, "n", 1, 1)  # one choice per request
    for key in ("presence_penalty", "frequency_penalty"):
        if _number(body, key, -2.0, 2.0):
            raise RequestError(f"{key} is not supported (only 0); use repetition_penalty instead", key)
    if "messages" not in body:
        raise RequestError("messages is required", "messages")
    messages = parse_messages(body["messages"])
    model_id = _model(body, model_ids, default_id)
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    temperature = _number(body, "temperature", 0.0, 2.0)
    temperature = 1.0 if temperature is None else temperature
    sampling: dict[str, Any] = {
        "temperature": temperature,
        "top_p": _number(body, "top_p", 0.0, 1.0, low_open=True),
        "top_k": _integer(body, "top_k", 0),
        "repetition_penalty": _number(body, "repetition_penalty", 0.0, 10.0, low_open=True),
        "seed": _integer(body, "seed", 0),
        "min_new_tokens": _integer(body, "min_tokens", 0),  # vLLM's extension
    }
    sampling["do_sample"] = temperature > 0
    return ChatRequest(
        model_id=model_id,
        messages=messages,
        stream=_boolean(body, "stream", False),
        max_new_tokens=max_tokens,
        sampling=sampling,
        stop=_stop(body.get("stop")),
    )


def parse_kaito_chat(body: Any, model_ids: list[str], default_id: str) -> ChatRequest:
    """KAITO's legacy ``/chat``: ``prompt`` or ``messages``, ``generate_kwargs``, ``return_full_text``."""
    if not isinstance(body, Mapping):
        raise RequestError("the body must be a JSON object")
    prompt, messages = body.get("prompt"), body.get("messages")
    if prompt is None and messages is None:
        raise RequestError("Text input (prompt or messages) is required", "prompt")
    if prompt is not None and messages is not None:
        raise RequestError("send prompt or messages, not both", "prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt):
        raise RequestError(f"prompt must be a non-empty string, got {prompt!r}", "prompt")
    kwargs = body.get("generate_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise RequestError(f"generate_kwargs must be an object, got {kwargs!r}", "generate_kwargs")
    unknown = sorted(set(kwargs) - set(KAITO_GENERATE_KWARGS))
    if unknown:
        raise RequestError(
            f"generate_kwargs {unknown} are not supported; allowed: {', '.join(KAITO_GENERATE_KWARGS)}",
            "generate_kwargs",
        )
    sampling = {
        "do_sample": _boolean(kwargs, "do_sample", False),
        "temperature": _number(kwargs, "temperature", 0.0, 100.0, low_open=True) or 1.0,
        "top_k": _integer(kwargs, "top_k", 0),
        "top_p": _number(kwargs, "top_p", 0.0, 1.0, low_open=True),
        "typical_p": _number(kwargs, "typical_p", 0.0, 1.0, low_open=True),
        "repetition_penalty": _number(kwargs, "repetition_penalty", 0.0, 10.0, low_open=True),
        "no_repeat_ngram_size": _integer(kwargs, "no_repeat_ngram_size", 0),
        "min_new_tokens": _integer(kwargs, "min_new_tokens", 0),
    }
    max_new = _integer(kwargs, "max_new_tokens", 1)
    max_length = _integer(kwargs, "max_length", 1)
    return ChatRequest(
        model_id=_model(body, model_ids, default_id),
        messages=parse_messages(messages) if messages is not None else None,
        prompt=prompt,
        return_full_text=_boolean(body, "return_full_text", True),
        max_new_tokens=max_new,
        max_length=max_length,
        default_max_length=KAITO_DEFAULT_MAX_LENGTH,
        sampling=sampling,
    )


def sampling_params(request: ChatRequest, prompt_tokens: int, limits: Limits) -> SamplingParams:
    """The request's generation settings once the prompt's length is known; 400 when they cannot fit.

    Limits the client set are checked; a default (KAITO's max_length 200, OpenAI's 256 new tokens) is
    cut to what the server and the context allow instead of failing a request that asked for nothing.
    """
    room = limits.max_context - prompt_tokens
    if request.max_new_tokens is not None:
        max_new, param = request.max_new_tokens, "max_tokens"
    elif request.max_length is not None:
        max_new, param = request.max_length - prompt_tokens, "generate_kwargs.max_length"
        if max_new < 1:
            raise RequestError(
                f"max_length {request.max_length} leaves no room after the prompt's {prompt_tokens} "
                "tokens; raise max_length or use max_new_tokens",
                param,
            )
    else:
        default = OPENAI_DEFAULT_MAX_TOKENS
        if request.default_max_length is not None:
            default = max(1, request.default_max_length - prompt_tokens)
        max_new, param = max(1, min(default, limits.max_new_tokens, room)), "max_tokens"
    if max_new > limits.max_new_tokens:
        raise RequestError(
            f"{param} asks for {max_new} new tokens; this server allows at most {limits.max_new_tokens}",
            param,
        )
    if prompt_tokens + max_new > limits.max_context:
        raise RequestError(
            f"the prompt's {prompt_tokens} tokens plus {max_new} new tokens exceed the model's context of "
            f"{limits.max_context}; shorten the prompt or ask for fewer tokens",
            param,
        )
    knobs = {k: v for k, v in request.sampling.items() if v is not None}
    return SamplingParams(max_new_tokens=max_new, stop=request.stop, **knobs)
