"""What a client sees when generation fails inside the server: a fixed message, never the exception's text
(it can carry paths, prompts or tokens); the details go to the server's log."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from inference.protocol import Limits
from inference.server import INTERNAL_ERROR, make_app

LEAK = "/var/run/secrets/token hf_do_not_show"


class FailingEngine:
    """The Engine's interface, failing every generation with a message that must not reach clients."""

    model_ids = ("base",)
    default_id = base_id = "base"

    def chat_prompt(self, messages: list[dict[str, str]], model_id: str) -> str:
        return "prompt"

    def count_tokens(self, text: str) -> int:
        return 1

    def generate(self, *args: Any) -> Any:
        raise RuntimeError(LEAK)

    generate_batch = generate


async def _answers() -> tuple[int, str, int, dict]:
    app = make_app(FailingEngine(), Limits(max_new_tokens=8, max_context=64))  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
        streamed = await client.post("/v1/chat/completions", json=body)
        text = await streamed.text()
        plain = await client.post("/v1/chat/completions", json={**body, "stream": False})
        return streamed.status, text, plain.status, await plain.json()


def test_a_failed_generation_tells_clients_nothing_of_the_exception(caplog):
    status, stream, plain_status, plain = asyncio.run(_answers())
    assert status == 200  # the stream had started: the error comes in-band
    events = [json.loads(line[len("data: ") :]) for line in stream.splitlines() if line.startswith("data: {")]
    assert events[-1] == {"error": {"message": INTERNAL_ERROR}}
    assert plain_status == 500 and plain == {"error": {"message": INTERNAL_ERROR}}
    assert LEAK not in stream and LEAK not in json.dumps(plain)
    assert LEAK in caplog.text  # the operator still finds it in the log
