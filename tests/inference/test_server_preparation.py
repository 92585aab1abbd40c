"""A request's parsing, chat template and token count run off the event loop: tokenizing a body near the
8 MiB limit took 7.5 s of CPU with the tiny preset's tokenizer, which on the loop would stall health
checks, metrics and every other client for that long."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from inference.model import Generation
from inference.protocol import Limits
from inference.server import make_app


class SlowCountingEngine:
    """The Engine's interface; counting tokens blocks until the test lets it go, and records its thread."""

    model_ids = ("base",)
    default_id = base_id = "base"

    def __init__(self) -> None:
        self.counting = threading.Event()
        self.release = threading.Event()
        self.threads: list[str] = []

    def chat_prompt(self, messages: list[dict[str, str]], model_id: str) -> str:
        return "prompt"

    def count_tokens(self, text: str) -> int:
        self.threads.append(threading.current_thread().name)
        self.counting.set()
        self.release.wait(30)
        return 1

    def generate(self, *args: Any) -> Generation:
        return Generation("answer", 1, 1, "stop")


async def _health_while_a_request_is_prepared(engine: SlowCountingEngine) -> tuple[int, int, str]:
    app = make_app(engine, Limits(max_new_tokens=8, max_context=64))  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        body = {"messages": [{"role": "user", "content": "hi"}]}
        chat = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        await asyncio.get_running_loop().run_in_executor(None, engine.counting.wait, 30)
        health = await asyncio.wait_for(client.get("/health"), 10)  # the loop is free meanwhile
        engine.release.set()
        answered = await chat
        return health.status, answered.status, (await answered.json())["choices"][0]["message"]["content"]


def test_health_answers_while_a_prompt_is_being_prepared():
    engine = SlowCountingEngine()
    health, status, text = asyncio.run(_health_while_a_request_is_prepared(engine))
    assert (health, status, text) == (200, 200, "answer")
    assert engine.threads == ["prepare_0"]
