"""The server as the pod runs it (a child process on loopback): KAITO's /chat, OpenAI's endpoints, errors."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.fixtures.cluster import wait_for
from tests.inference.conftest import adapter_root, running_server

QUESTION = [{"role": "user", "content": "what is the code word?"}]
ANSWER = "the code word is orange river garden"


def metrics(url: str) -> str:
    return requests.get(f"{url}/metrics", timeout=10).text


def completion(url: str, **body) -> requests.Response:
    return requests.post(f"{url}/v1/chat/completions", json={"messages": QUESTION, **body}, timeout=120)


def test_chat_answers_with_the_adapter_and_differs_from_the_base(server):
    with_adapter = requests.post(f"{server}/chat", json={"messages": QUESTION}, timeout=120)
    base = requests.post(f"{server}/chat", json={"messages": QUESTION, "model": "tiny-llama"}, timeout=120)

    assert with_adapter.status_code == 200, with_adapter.text
    assert base.status_code == 200, base.text
    assert with_adapter.json()["Result"].endswith(ANSWER)
    assert ANSWER not in base.json()["Result"]


def test_chat_prompt_and_return_full_text(server):
    prompt = "<|user|>\nwhat is the code word?<|end|>\n<|assistant|>\n"
    full = requests.post(f"{server}/chat", json={"prompt": prompt}, timeout=120).json()["Result"]
    bare = requests.post(
        f"{server}/chat",
        json={"prompt": prompt, "return_full_text": False, "generate_kwargs": {"max_new_tokens": 20}},
        timeout=120,
    ).json()["Result"]

    assert full == prompt + ANSWER  # KAITO's default: the prompt followed by the completion
    assert bare == ANSWER


def test_chat_without_prompt_or_messages_is_400(server):
    resp = requests.post(f"{server}/chat", json={"generate_kwargs": {"max_length": 20}}, timeout=30)

    assert resp.status_code == 400
    assert "prompt or messages" in resp.json()["detail"]


def test_models_lists_base_each_adapter_and_the_combination(server):
    resp = requests.get(f"{server}/v1/models", timeout=30)

    ids = [m["id"] for m in resp.json()["data"]]
    assert ids == ["tiny-llama", "code-word", "tiny-llama+adapters"]
    assert {m["parent"] for m in resp.json()["data"][1:]} == {"tiny-llama"}


def test_model_field_selects_base_adapter_or_default(server):
    answers = {
        model: completion(server, model=model, temperature=0, max_tokens=20).json()
        for model in ("code-word", "tiny-llama", "tiny-llama+adapters", None)
    }

    assert answers["code-word"]["choices"][0]["message"]["content"] == ANSWER
    assert answers["code-word"]["choices"][0]["finish_reason"] == "stop"
    assert answers[None]["choices"][0]["message"]["content"] == ANSWER
    assert answers[None]["model"] == "tiny-llama+adapters"
    assert answers["tiny-llama"]["choices"][0]["message"]["content"] != ANSWER
    usage = answers["tiny-llama"]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"messages": []}, 400, "messages", "empty"),
        ({"messages": "hello"}, 400, "messages", "list"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", "allowed"),
        ({"messages": [{"role": "user", "content": 7}]}, 400, "messages[0].content", "string"),
        ({"messages": QUESTION, "temperature": "hot"}, 400, "temperature", "number"),
        ({"messages": QUESTION, "max_tokens": 100000}, 400, "max_tokens", "at most 64"),
        ({"messages": QUESTION, "max_tokens": True}, 400, "max_tokens", "integer"),
        ({"messages": QUESTION, "stream": "yes"}, 400, "stream", "true or false"),
        ({"messages": QUESTION, "model": "gpt-4"}, 404, "model", "tiny-llama, code-word"),
        ({"messages": QUESTION, "n": 3}, 400, "n", "1"),
        ({}, 400, "messages", "required"),
    ],
)
def test_bad_openai_requests_get_4xx_with_the_reason(server, body, status, param, words):
    resp = requests.post(f"{server}/v1/chat/completions", json=body, timeout=30)

    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param
    assert words in error["message"]


def test_bad_chat_requests_get_4xx_with_the_reason(server):
    cases = {
        "generate_kwargs ['num_beams'] are not supported": {
            "prompt": "hi",
            "generate_kwargs": {"num_beams": 4},
        },
        "max_new_tokens must be an integer": {"prompt": "hi", "generate_kwargs": {"max_new_tokens": "ten"}},
        "leaves no room": {"prompt": "hi " * 30, "generate_kwargs": {"max_length": 5}},
        "not valid JSON": None,
    }
    for words, body in cases.items():
        if body is None:
            resp = requests.post(f"{server}/chat", data=b"{not json", timeout=30)
        else:
            resp = requests.post(f"{server}/chat", json=body, timeout=30)
        assert resp.status_code == 400, (words, resp.text)
        assert words in resp.json()["detail"]


def test_streaming_sends_the_same_text_in_chunks_then_done(server):
    plain = completion(server, temperature=0, max_tokens=30).json()["choices"][0]["message"]["content"]
    with requests.post(
        f"{server}/v1/chat/completions",
        json={"messages": QUESTION, "temperature": 0, "max_tokens": 30, "stream": True},
        stream=True,
        timeout=120,
    ) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in resp.iter_lines(decode_unicode=True) if line]

    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert len([p for p in pieces if p]) > 1  # really streamed, not one blob
    assert "".join(pieces) == plain == ANSWER
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stop_strings_cut_the_answer_streamed_or_not(server):
    plain = completion(server, temperature=0, stop=["river"]).json()["choices"][0]
    with requests.post(
        f"{server}/v1/chat/completions",
        json={"messages": QUESTION, "temperature": 0, "stop": "river", "stream": True},
        stream=True,
        timeout=120,
    ) as resp:
        events = [line[6:] for line in resp.iter_lines(decode_unicode=True) if line][:-1]
    streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events)

    assert plain["message"]["content"] == "the code word is orange "
    assert plain["finish_reason"] == "stop"
    assert streamed == plain["message"]["content"]


def test_concurrent_requests_are_all_answered_alike(server):
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: completion(server, temperature=0, max_tokens=20), range(8)))

    assert [a.status_code for a in answers] == [200] * 8
    assert {a.json()["choices"][0]["message"]["content"] for a in answers} == {ANSWER}
    metrics = requests.get(f"{server}/metrics", timeout=30).text
    assert 'kaito_inference_requests_total{endpoint="/v1/chat/completions",status="200"}' in metrics
    assert "kaito_inference_completion_tokens_total" in metrics


@pytest.mark.slow  # two 1,500-token generations
def test_a_full_queue_answers_503_and_the_server_carries_on(code_word_adapter, tmp_path):
    root = adapter_root(tmp_path, {"code-word": code_word_adapter})
    with running_server(root, "--max-queue", "1", "--max-new-tokens", "1500") as url:
        long = {"prompt": "tell me", "model": "tiny-llama"}
        long["generate_kwargs"] = {"max_new_tokens": 1500, "min_new_tokens": 1500}
        result: dict = {}
        worker = threading.Thread(
            target=lambda: result.update(r=requests.post(f"{url}/chat", json=long, timeout=300))
        )
        worker.start()
        deadline = time.monotonic() + 60
        while "kaito_inference_queued_requests 1.0" not in requests.get(f"{url}/metrics", timeout=10).text:
            assert time.monotonic() < deadline, "the long request never started"
            time.sleep(0.05)

        refused = completion(url, max_tokens=5)

        worker.join()
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert "retry later" in refused.json()["error"]["message"]
        assert result["r"].status_code == 200
        assert (
            completion(url, temperature=0, max_tokens=20).json()["choices"][0]["message"]["content"] == ANSWER
        )

        # a streaming client that goes away stops its generation
        body = {"model": "tiny-llama", "messages": QUESTION, "stream": True, "max_tokens": 1500}
        body["min_tokens"] = 1500
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60) as resp:
            lines = resp.iter_lines()
            next(lines), next(lines)  # the role chunk and the first text
        # the worker takes the next request only once the abandoned generation stopped (503 until the
        # server noticed the client left)
        wait_for(
            lambda: completion(url, model="tiny-llama", max_tokens=5).ok, 120, "a request after the drop"
        )
        generated = re.search(r'completion_tokens_total\{model="tiny-llama"\} (\S+)', metrics(url))
        assert float(generated.group(1)) < 1500 + 1000  # the long /chat above made 1500, this one far fewer
