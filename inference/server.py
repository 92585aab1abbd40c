"""The HTTP app: KAITO's ``/chat``, OpenAI's ``/v1/chat/completions`` and ``/v1/models``, health, metrics.

Generation runs on one worker thread (the model's active adapter is shared state, and one CPU/GPU
stream is busy anyway); requests wait in that worker's queue while the event loop keeps answering
health checks, metrics and new requests, and waiting greedy requests for one model share a batch.
Past ``max_queue`` waiting requests the server answers 503 with Retry-After instead of piling up work.
A client that goes away stops its generation at the next token.

Errors: OpenAI endpoints answer ``{"error": {"message", "type", "param"}}``; ``/chat`` answers KAITO's
(FastAPI's) ``{"detail": "..."}``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from inference.model import Engine, Generation, SamplingParams
from inference.protocol import (
    ChatRequest,
    Limits,
    RequestError,
    parse_kaito_chat,
    parse_openai_chat,
    sampling_params,
)

log = logging.getLogger(__name__)
OWNER = "kaito-tune"
# What a client sees of a failure inside the server: exception text can carry paths, prompts or tokens.
INTERNAL_ERROR = "internal error; see the server log"


class Busy(Exception):
    """More requests are waiting than ``max_queue`` allows."""


@dataclass
class Metrics:
    """The server's Prometheus metrics, in a registry of its own (one per app, so tests can run several)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "kaito_inference_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "kaito_inference_request_seconds",
            "Time from request to last byte, by endpoint",
            ["endpoint"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.prompt_tokens = Counter("kaito_inference_prompt_tokens", "Prompt tokens", ["model"], registry=r)
        self.completion_tokens = Counter(
            "kaito_inference_completion_tokens", "Generated tokens", ["model"], registry=r
        )
        self.queued = Gauge("kaito_inference_queued_requests", "Generations running or waiting", registry=r)
        self.batch_size = Histogram(
            "kaito_inference_batch_size",
            "Requests per generate call",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32),
        )


@dataclass
class _Job:
    """One queued generation and the future its request awaits."""

    model_id: str
    prompt: str
    params: SamplingParams
    on_text: Callable[[str], object] | None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)

    def batches_with(self, other: _Job) -> bool:
        plain = self.on_text is None and other.on_text is None and self.model_id == other.model_id
        return plain and self.params.batches_with(other.params)


def _all_cancelled(jobs: list[_Job]) -> bool:
    return all(j.cancel.is_set() for j in jobs)


class Generator:
    """The single generation worker and its bounded queue.

    The worker takes the oldest request and, when it is greedy and not streamed, every queued request
    that can share its batch (same model and settings, up to ``max_batch``); the others keep their
    place. Generation stays on this one thread because the active adapter is model state.
    """

    def __init__(self, engine: Engine, max_queue: int, metrics: Metrics, max_batch: int = 8):
        self.engine = engine
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.metrics = metrics
        self.pending = 0
        self._queue: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="generate", daemon=True)
        self._thread.start()

    async def run(
        self,
        model_id: str,
        prompt: str,
        params: SamplingParams,
        on_text: Callable[[str], object] | None = None,
    ) -> Generation:
        if self.pending >= self.max_queue:
            raise Busy(f"{self.pending} requests are already waiting (limit {self.max_queue}); retry later")
        job = _Job(model_id, prompt, params, on_text)
        self.pending += 1
        self.metrics.queued.set(self.pending)
        with self._ready:
            self._queue.append(job)
            self._ready.notify()
        try:
            result = await asyncio.wrap_future(job.future)
        finally:
            job.cancel.set()  # a cancelled await (client gone) stops the generation at its next token
            self.pending -= 1
            self.metrics.queued.set(self.pending)
        return result

    def _next_batch(self) -> list[_Job] | None:
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            first = self._queue.popleft()
            batch = [first]
            for job in list(self._queue):
                if len(batch) >= self.max_batch:
                    break
                if first.batches_with(job):
                    self._queue.remove(job)
                    batch.append(job)
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [
                job for job in batch if job.future.set_running_or_notify_cancel() and not job.cancel.is_set()
            ]
            if not batch:
                continue
            self.metrics.batch_size.observe(len(batch))
            try:
                if len(batch) == 1:
                    job = batch[0]
                    results = [
                        self.engine.generate(job.model_id, job.prompt, job.params, job.on_text, job.cancel)
                    ]
                else:
                    results = self.engine.generate_batch(
                        batch[0].model_id,
                        [j.prompt for j in batch],
                        [j.params for j in batch],
                        functools.partial(_all_cancelled, batch),  # stop once all left
                    )
            except Exception as exc:  # the requests fail, the worker carries on
                log.exception("generation failed")
                for job in batch:
                    job.future.set_exception(exc)
                continue
            for job, result in zip(batch, results, strict=True):
                # counted here, so tokens made for a client that left count too
                self.metrics.prompt_tokens.labels(job.model_id).inc(result.prompt_tokens)
                self.metrics.completion_tokens.labels(job.model_id).inc(result.completion_tokens)
                job.future.set_result(result)

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for job in self._queue:
            job.future.cancel()


def openai_error(status: int, message: str, param: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.json_response(body, status=status, headers=headers)


def kaito_error(status: int, message: str) -> web.Response:
    return web.json_response({"detail": message}, status=status)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"the body is not valid JSON: {exc}") from None


Parse = Callable[[Any, list[str], str], ChatRequest]


class Handlers:
    """Route handlers over one engine; pure parsing lives in inference.protocol."""

    def __init__(self, engine: Engine, limits: Limits, generator: Generator):
        self.engine = engine
        self.limits = limits
        self.generator = generator
        self.created = int(time.time())
        self.preparing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")

    async def _prepared(self, request: web.Request, parse: Parse) -> tuple[ChatRequest, str, SamplingParams]:
        """The request parsed, its prompt templated and counted on the preparation thread: counting
        the tokens of a body near the 8 MiB limit took 7.5 s of CPU (the tiny preset's tokenizer, 2
        cores), which on the event loop would stall health checks, metrics and every other client.
        The generation thread uses the same tokenizer meanwhile: 300 concurrent padded and unpadded
        encodes from two threads raised nothing with the pinned tokenizers."""
        body = await request.read()
        return await asyncio.get_running_loop().run_in_executor(self.preparing, self._prepare, body, parse)

    def _prepare(self, body: bytes, parse: Parse) -> tuple[ChatRequest, str, SamplingParams]:
        chat = parse(_json(body), self.engine.model_ids, self.engine.default_id)
        prompt = (
            chat.prompt
            if chat.prompt is not None
            else self.engine.chat_prompt(chat.messages or [], chat.model_id)
        )
        return chat, prompt, sampling_params(chat, self.engine.count_tokens(prompt), self.limits)

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "Healthy", "models": self.engine.model_ids})

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(request.app["metrics"].registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, _: web.Request) -> web.Response:
        base = self.engine.base_id
        data = [
            {
                "id": model_id,
                "object": "model",
                "created": self.created,
                "owned_by": OWNER,
                "root": base,
                "parent": None if model_id == base else base,
                "max_model_len": self.limits.max_context,
            }
            for model_id in self.engine.model_ids
        ]
        return web.json_response({"object": "list", "data": data})

    async def kaito_chat(self, request: web.Request) -> web.Response:
        try:
            chat, prompt, params = await self._prepared(request, parse_kaito_chat)
            result = await self.generator.run(chat.model_id, prompt, params)
        except RequestError as exc:
            return kaito_error(exc.status, str(exc))
        except Busy as exc:
            return kaito_error(503, str(exc))
        text = prompt + result.text if chat.return_full_text else result.text
        return web.json_response({"Result": text})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            chat, prompt, params = await self._prepared(request, parse_openai_chat)
            if chat.stream:
                return await self._stream(request, chat, prompt, params)
            result = await self.generator.run(chat.model_id, prompt, params)
        except RequestError as exc:
            return openai_error(exc.status, str(exc), exc.param)
        except Busy as exc:
            return openai_error(503, str(exc))
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": _usage(result),
        }
        return web.json_response(completion)

    async def _stream(
        self, request: web.Request, chat: ChatRequest, prompt: str, params: SamplingParams
    ) -> web.StreamResponse:
        """Server-sent events: a role chunk, content chunks as text decodes, a finish chunk, ``[DONE]``."""
        if self.generator.pending >= self.generator.max_queue:
            raise Busy(f"{self.generator.pending} requests are already waiting; retry later")
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
            body = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": chat.model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n".encode()

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await response.write(chunk({"role": "assistant", "content": ""}))
        task = asyncio.ensure_future(
            self.generator.run(
                chat.model_id, prompt, params, lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
            )
        )
        task.add_done_callback(lambda _: pieces.put_nowait(None))
        try:
            while (piece := await pieces.get()) is not None:
                await response.write(chunk({"content": piece}))
            result = await task
        except (ConnectionResetError, asyncio.CancelledError):
            task.cancel()
            raise
        except Exception:  # the headers are sent: report in-band, as OpenAI's streams do
            log.exception("generation failed")  # the details stay in the log, as for a non-streamed 500
            await response.write(f"data: {json.dumps({'error': {'message': INTERNAL_ERROR}})}\n\n".encode())
            return response
        await response.write(chunk({}, result.finish_reason, _usage(result)))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _usage(result: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


@web.middleware
async def _observe(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Count and time every request by route (not raw path, so unknown URLs cannot grow the labels)."""
    metrics: Metrics = request.app["metrics"]
    route = request.match_info.route.resource
    endpoint = route.canonical if route is not None else "other"
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        status = 500
        return web.json_response({"error": {"message": INTERNAL_ERROR}}, status=500)
    finally:
        metrics.requests.labels(endpoint, str(status)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def make_app(engine: Engine, limits: Limits, max_queue: int = 64, max_batch: int = 8) -> web.Application:
    """The aiohttp application serving ``engine``; the worker thread stops with the app."""
    metrics = Metrics()
    generator = Generator(engine, max_queue, metrics, max_batch)
    handlers = Handlers(engine, limits, generator)
    app = web.Application(middlewares=[_observe], client_max_size=8 * 1024 * 1024)
    app["metrics"] = metrics
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_post("/chat", handlers.kaito_chat)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)

    async def stop_worker(_: web.Application) -> None:
        generator.close()
        handlers.preparing.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(stop_worker)
    return app
