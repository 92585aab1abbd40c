"""The one-command demo (`make demo`): a tuning Workspace end to end on this machine, no cloud, no GPU.

What runs is what a cluster runs: a real local cluster (hack/control-plane.sh --node: kube-apiserver,
kubelet, containerd, kube-proxy, CoreDNS), the chart's operator as a Deployment in the controller image,
and the Jobs and Deployments it renders, in real containers from the project's images (data check, fetch,
train, push in the runtime and tools images; adapter pull and the inference server).

1. generate the code-word data (presets/tiny_task.py), serve it on the node's address;
2. apply examples/tuning/tiny-llama-demo.yaml (only the data and registry hosts replaced) and follow the
   training with `kaito-tune status --watch`'s progress bar; the adapter is pushed to a local registry, and
   the Workspace's status says how it did on held-out rows against the base model;
3. apply examples/inference/tiny-llama-with-adapter.yaml and ask held-out questions through
   /v1/chat/completions and /chat, next to the expected answer and the base model's;
4. print a summary (adapter digest, logs, kubeconfig, commands) and stop everything (also on Ctrl-C).

    .venv/bin/python -m hack.demo [--steps N] [--keep] [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import requests
import yaml

from contract.reports import evaluation_line
from hack.cluster import REPO_ROOT, kube_json, tool_path
from hack.local_stack import LocalStack
from hack.operators import RELEASE
from hack.processes import wait_for
from presets.tiny_task import split_rows, write_parquet
from tuning_controller.cli_status import status_lines, watch

NAMESPACE = "kaito-demo"
SECRET = "demo-registry"
TUNING_EXAMPLE = REPO_ROOT / "examples/tuning/tiny-llama-demo.yaml"
INFERENCE_EXAMPLE = REPO_ROOT / "examples/inference/tiny-llama-with-adapter.yaml"
EXAMPLE_DATA_HOST = "127.0.0.1:8000"  # the placeholders in the example files
EXAMPLE_REGISTRY_HOST = "127.0.0.1:5000"
DATA_FILE = "code-words.parquet"
API = "/apis/kaito.sh/v1beta1"
SHOWN = 8  # held-out questions printed (all are asked)
TRAINING_TIMEOUT_S = 900
SERVING_TIMEOUT_S = 300


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def templated(path: Path, data_host: str, registry_host: str) -> list[dict[str, Any]]:
    """The example's documents with only the data and registry hosts replaced."""
    text = (
        path.read_text().replace(EXAMPLE_DATA_HOST, data_host).replace(EXAMPLE_REGISTRY_HOST, registry_host)
    )
    return [doc for doc in yaml.safe_load_all(text) if doc]


def with_steps(docs: list[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    """The training ConfigMap with another max_steps (the demo's test trains fewer)."""
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            config = yaml.safe_load(doc["data"]["training_config.yaml"])
            config["training_config"]["TrainingArguments"]["max_steps"] = steps
            doc["data"]["training_config.yaml"] = yaml.safe_dump(config, sort_keys=False)
    return docs


def create(api, doc: dict[str, Any]) -> None:
    """POST one object into the demo namespace (what `kubectl apply` does for a new object)."""
    group_version = doc["apiVersion"]
    plural = {"ConfigMap": "configmaps", "Secret": "secrets", "Workspace": "workspaces"}[doc["kind"]]
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    kube_json(api, "POST", f"{base}/namespaces/{NAMESPACE}/{plural}", doc)


def push_secret(docker_config_json: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(docker_config_json.encode()).decode()},
    }


def workspace_reader(api, name: str) -> Callable[[], dict[str, Any]]:
    return lambda: kube_json(api, "GET", f"{API}/namespaces/{NAMESPACE}/workspaces/{name}")


def condition_status(ws: dict[str, Any], type_: str) -> str | None:
    found = [c for c in (ws.get("status") or {}).get("conditions") or [] if c["type"] == type_]
    return found[0].get("status") if found else None


@dataclass(frozen=True)
class Answer:
    question: str
    expected: str
    adapter: str
    base: str
    chat: str = ""  # asked through /chat too (the first question only)

    @property
    def right(self) -> bool:
        return self.adapter == self.expected


def ask(url: str, question: str, model: str) -> str:
    """One greedy /v1/chat/completions answer."""
    body = {"model": model, "messages": [{"role": "user", "content": question}]}
    body |= {"temperature": 0, "max_tokens": 8}
    resp = requests.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    resp.raise_for_status()
    return resp.json()["choices"][0]["message"]["content"].strip()


def ask_chat(url: str, question: str) -> str:
    """The same question through KAITO's legacy /chat (the default model: base + adapter)."""
    body = {"messages": [{"role": "user", "content": question}], "return_full_text": False}
    body |= {"generate_kwargs": {"max_new_tokens": 8, "do_sample": False}}
    resp = requests.post(f"{url}/chat", json=body, timeout=120)
    resp.raise_for_status()
    return str(resp.json()["Result"]).strip()


def serving(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.RequestException:
        return False


def run_demo(state_dir: Path, steps: int | None = None, keep: bool = False) -> dict[str, Any]:
    """The whole demo; returns what it found (adapter reference, answers) for the caller and the test."""
    started = time.monotonic()
    with LocalStack(state_dir, max_seconds=3600, log=say) as stack:
        api, registry, data = stack.api, stack.registry, stack.data
        say("installing the chart: the operator runs as its Deployment on the node")
        stack.install_operator(progressIntervalSeconds=1)
        train, held_out = split_rows()
        write_parquet(data.root / DATA_FILE, train)
        say(
            f"{len(train)} training rows served at {data.url}/{DATA_FILE}; {len(held_out)} questions held out"
        )
        kube_json(api, "POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        wait_for(
            lambda: kube_json(api, "GET", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts").get("items"),
            30,
            f"the default ServiceAccount of {NAMESPACE}",
        )
        create(api, push_secret(registry.docker_config_json()))

        docs = templated(TUNING_EXAMPLE, data.url.removeprefix("http://"), registry.host)
        if steps is not None:
            docs = with_steps(docs, steps)
        for doc in docs:
            create(api, doc)
        tuning = next(d for d in docs if d["kind"] == "Workspace")
        tuning_name, method = tuning["metadata"]["name"], tuning["tuning"]["method"]
        say(
            f"applied {TUNING_EXAMPLE.relative_to(REPO_ROOT)}: {method} training "
            "(`kaito-tune status --watch`'s bar)"
        )
        code, ws = watch(workspace_reader(api, tuning_name), out=sys.stdout, max_seconds=TRAINING_TIMEOUT_S)
        print("\n".join(status_lines(ws)))
        if code != 0:
            raise DemoError(f"the tuning Workspace did not succeed; pod logs: {logs_command(stack)}")
        adapter = ws["status"]["tuning"]["adapter"]
        reference = f"{adapter['image'].rsplit(':', 1)[0]}@{adapter['digest']}"
        say(f"adapter pushed: {reference}")
        evaluation = ws["status"]["tuning"].get("evaluation") or {}
        say(f"evaluation (status.tuning.evaluation): {evaluation_line(evaluation)}")

        (serve,) = [d for d in templated(INFERENCE_EXAMPLE, "", registry.host) if d["kind"] == "Workspace"]
        create(api, serve)
        adapter_name = serve["inference"]["adapters"][0]["source"]["name"]
        base_model = serve["inference"]["preset"]["name"]
        say(f"applied {INFERENCE_EXAMPLE.relative_to(REPO_ROOT)}: pulling the adapter, starting the server")
        read = workspace_reader(api, serve["metadata"]["name"])
        wait_for(
            lambda: condition_status(read(), "InferenceReady") == "True",
            SERVING_TIMEOUT_S,
            f"InferenceReady (pod logs: {logs_command(stack)})",
            interval=1,
        )
        service = kube_json(
            api, "GET", f"/api/v1/namespaces/{NAMESPACE}/services/{serve['metadata']['name']}"
        )
        url = f"http://{service['spec']['clusterIP']}"  # kube-proxy routes it to the server pod
        wait_for(lambda: serving(url), 60, f"{url}/health", interval=1)
        answers = []
        for row in held_out:
            question, expected = row["messages"][0]["content"], row["messages"][1]["content"]
            with_adapter, base = ask(url, question, adapter_name), ask(url, question, base_model)
            answers.append(Answer(question, expected, with_adapter, base))
        answers[0] = replace(answers[0], chat=ask_chat(url, answers[0].question))
        print_answers(answers)
        result = {
            "adapter": reference,
            "evaluation": evaluation,
            "right": sum(a.right for a in answers),
            "asked": len(answers),
            "answers": [asdict(a) for a in answers],
            "seconds": round(time.monotonic() - started, 1),
        }
        print_summary(
            stack, tuning_name, serve["metadata"]["name"], reference, url, adapter_name, result, keep
        )
        if keep:
            say("everything keeps running; Ctrl-C stops it")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        say("stopping the operator, registry and cluster")
    return result


class DemoError(RuntimeError):
    """The demo could not finish; the message says where to look."""


def logs_command(stack: LocalStack) -> str:
    kubectl = tool_path("kubectl")
    return f"{kubectl} --kubeconfig {stack.control_plane.kubeconfig} logs -n {NAMESPACE} POD -c CONTAINER"


def print_answers(answers: list[Answer]) -> None:
    width = max(len(a.question) for a in answers)
    print(f"\n{'held-out question':<{width}}  {'expected':<10} {'with adapter':<14} base model")
    for a in answers[:SHOWN]:
        mark = "ok" if a.right else "--"
        print(f"{a.question:<{width}}  {a.expected:<10} {a.adapter:<12} {mark} {a.base!r}")
    print(f"... and {len(answers) - SHOWN} more" if len(answers) > SHOWN else "", end="")
    print(f"\n/chat ({answers[0].question!r}): {answers[0].chat!r}")
    print(
        f"{sum(a.right for a in answers)}/{len(answers)} held-out questions answered right with the adapter\n"
    )


def print_summary(
    stack: LocalStack,
    tuning: str,
    serve: str,
    reference: str,
    url: str,
    adapter: str,
    result: dict,
    keep: bool,
) -> None:
    kubeconfig, kubectl = stack.control_plane.kubeconfig, tool_path("kubectl")
    body = json.dumps({"model": adapter, "messages": [{"role": "user", "content": "code word for Paris?"}]})
    lines = [
        f"adapter         {reference}",
        f"held-out loss   {result['evaluation'].get('summary', 'none')} (base model -> adapter)",
        f"registry        {stack.registry.host} (user {stack.registry.username}, {stack.registry.storage})",
        f"kubeconfig      export KUBECONFIG={kubeconfig}",
        f"operator log    {kubectl} --kubeconfig {kubeconfig} logs -n kaito-tune deploy/{RELEASE}",
        f"pod logs        {logs_command(stack)}",
        f"cluster logs    {stack.control_plane.logs_dir} (kubelet, containerd, kube-apiserver, ...)",
        f"status          .venv/bin/kaito-tune status {tuning} -n {NAMESPACE} --kubeconfig {kubeconfig}",
        f"                .venv/bin/kaito-tune status {serve} -n {NAMESPACE} --kubeconfig {kubeconfig}",
        f"chat            curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'",
        f"wall time       {result['seconds']} s (demo, without setup)",
    ]
    if not keep:
        lines.append(
            "(everything stops now: `.venv/bin/python -m hack.demo --keep` keeps it up for these commands)"
        )
    print("\n".join(["Summary", *("  " + line for line in lines)]), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="training steps (default: the example's max_steps)")
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    parser.add_argument("--state-dir", type=Path, help="where logs and state go (default: a new temp dir)")
    args = parser.parse_args(argv)
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="kaito-tune-demo-"))
    say(f"state and logs: {state_dir}")
    try:
        result = run_demo(state_dir, args.steps, args.keep)
    except KeyboardInterrupt:
        say("interrupted: everything stopped")
        return 130
    except (DemoError, AssertionError, RuntimeError) as exc:
        say(f"demo failed: {exc}\n    logs: {state_dir}")
        return 1
    return 0 if result["right"] > result["asked"] // 2 else 1


if __name__ == "__main__":
    sys.exit(main())
