"""What the Workspace CRD's CEL rules cost the API server, rule by rule, on a real kube-apiserver.

    .venv/bin/python benchmarks/cel_cost.py                          # 10 rounds x 10 ops per variant and op
    .venv/bin/python benchmarks/cel_cost.py --rounds 2 --batch 3     # smoke run
    .venv/bin/python benchmarks/cel_cost.py --state-dir DIR          # use a running hack/control-plane.sh
    git show REV:charts/kaito-tune/crds/workspaces.kaito.sh.yaml > old.yaml
    .venv/bin/python benchmarks/cel_cost.py --also before=old.yaml   # REV's CRD as one more variant

The control plane is hack/control-plane.sh without a node (etcd, kube-apiserver, controller manager and
scheduler on 127.0.0.1). One copy of the CRD per variant is installed side by side, each in its own API group
(``b<i>.cel-bench.kaito.sh``; kind, plural and schema otherwise as shipped), so all variants are measured in
the same minutes:

- ``full``: ``tuning_controller.crd.build_crd()`` as shipped;
- ``none``: the same schema with every ``x-kubernetes-validations`` removed (the floor);
- ``only:<rule>``: ``none`` plus that one rule (what the rule costs by itself);
- ``without:<rule>`` (``--per-rule without|both``): ``full`` less that one rule;
- ``--also NAME=FILE``: another CRD manifest as a whole (an older commit's, to compare in the same minutes).

Operations, timed on the client over one kept-alive HTTPS connection, one at a time:

- ``create_dry``: POST ``?dryRun=All`` of a Workspace from examples/ (validation runs, nothing is stored);
- ``create``: the same POST, stored (unique names; these objects are the targets of the two updates);
- ``status``: a merge patch of ``/status`` (what the operator writes; the API server validates the whole
  object again, transition rules with ``oldSelf`` included);
- ``annotate``: a merge patch of one annotation (what kopf writes on every handling);
- ``create_dry_max``: POST ``?dryRun=All`` of the largest Workspace the schema allows where rules iterate:
  an inference Workspace with ``MAX_ADAPTERS`` adapters (half image, half volume, all with strength).

The examples (every ``kind: Workspace`` document under examples/, tuning and inference) are used in turn.
Each round runs the variants in a new shuffled order, ``--batch`` operations of each kind per variant, then a
burst for ``full``, ``none`` and the ``--also`` variants (in random order): ``--burst`` stored creates from
16 threads at once, as a ``kubectl apply -f`` of many Workspaces or the controller_scale benchmark does.

Around each batch the API server's ``/metrics`` is read. ``apiserver_cel_evaluation_duration_seconds`` is the
CEL time the server measured itself (nothing else in this cluster evaluates CEL), but it is observed at every
level of the schema on the way down to a rule (the root, each field, the items of a list), each observation
including the levels below it. So ``cel_sum_us`` (its sum per operation, the median over batches) counts a
rule once per level above it, an upper bound, and ``cel_obs`` is the number of observations per operation. A
rule's own time (``cel_us`` under ``rules``) is its variant's sum over ``none``'s divided by the number of
levels that observed it (it includes its node's activation); ``rules_cel_us_total`` adds those up, an
estimate of what ``full`` spends.
``apiserver_cel_compilation_duration_seconds`` is read around the install of ``full`` and its first requests
(the handler compiles on first use).

Figures per variant and operation: client p50/p95 in ms over all rounds and their ratio to ``none``'s, and
``paired_extra_ms``: the median over rounds of (this variant's batch median - ``none``'s batch median in the
same round); bursts add the median wall time of one burst and creates per second. Per rule (``only``): its
``cel_us`` and ``extra_ms`` (its paired extra). Prints one JSON object.

Not measured: admission webhooks (there are none), etcd on a real disk (``--unsafe-no-fsync``), a watch cache
under many watchers, or an API server other than the one hack/build-tools.sh builds.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract.workspace import MAX_ADAPTERS  # noqa: E402
from hack.cluster import start_control_plane, stop_control_plane  # noqa: E402
from hack.processes import wait_for  # noqa: E402
from tuning_controller.crd import RULES, build_crd  # noqa: E402

MODES = ("create_dry", "create", "status", "annotate", "create_dry_max")
BURST_THREADS = 16
NAMESPACE = "default"
METRICS = {
    "cel_eval": "apiserver_cel_evaluation_duration_seconds",
    "cel_compile": "apiserver_cel_compilation_duration_seconds",
    "ratcheting": "apiextensions_apiserver_validation_ratcheting_seconds",
}
VALIDATIONS = "x-kubernetes-validations"
Batch = tuple[int, str, str, list[float], dict[str, float]]  # round, variant, mode, latencies, metric deltas
Keep = Callable[[dict[str, str]], bool]  # which rules a variant keeps


# --- the variants ------------------------------------------------------------------------------------


def rule_ids() -> list[tuple[str, dict[str, str]]]:
    """Every rule of the CRD with a short id: its schema location and index there ("tuning#2")."""
    out = [
        (f"{location or '<root>'}#{index}", rule)
        for location, rules in RULES.items()
        for index, rule in enumerate(rules)
    ]
    keys = [(r["rule"], r["message"]) for _, r in out]
    assert len(set(keys)) == len(keys), "two rules with the same text and message"
    return out


def _filter_rules(node: Any, keep: Keep) -> Any:
    if isinstance(node, list):
        return [_filter_rules(v, keep) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _filter_rules(v, keep) for k, v in node.items() if k != VALIDATIONS}
    kept = [r for r in node.get(VALIDATIONS, []) if keep(r)]
    if kept:
        out[VALIDATIONS] = kept
    return out


def variant_crd(index: int, base: dict[str, Any], keep: Keep) -> dict[str, Any]:
    """The CRD `base` in its own group with only the rules `keep` accepts."""
    crd = _filter_rules(base, keep)
    group = f"b{index}.cel-bench.kaito.sh"
    crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{group}"
    crd["spec"]["group"] = group
    crd["spec"]["names"].pop("shortNames", None)
    crd["spec"]["names"].pop("categories", None)
    return crd


def _all(rule: dict[str, str]) -> bool:
    return True


def _nothing(rule: dict[str, str]) -> bool:
    return False


def _only(rule: dict[str, str]) -> Keep:
    return lambda r: r == rule


def _without(rule: dict[str, str]) -> Keep:
    return lambda r: r != rule


def variants(per_rule: str, also: list[str]) -> dict[str, tuple[dict[str, Any], Keep]]:
    """Variant name -> the CRD it starts from and which of its rules it keeps."""
    crd = build_crd()
    out: dict[str, tuple[dict[str, Any], Keep]] = {"full": (crd, _all), "none": (crd, _nothing)}
    for rule_id, rule in rule_ids():
        if per_rule in ("only", "both"):
            out[f"only:{rule_id}"] = (crd, _only(rule))
        if per_rule in ("without", "both"):
            out[f"without:{rule_id}"] = (crd, _without(rule))
    for spec in also:  # NAME=FILE: another CRD manifest of workspaces.kaito.sh, e.g. an older commit's
        name, _, path = spec.partition("=")
        out[name] = (yaml.safe_load(Path(path).read_text()), _all)
    return out


def examples() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Workspace":
                docs.append(doc)
    return docs


def largest() -> dict[str, Any]:
    """An inference Workspace with the most adapters the schema allows, every rule on them in play."""
    adapters = []
    for i in range(MAX_ADAPTERS):
        source: dict[str, Any] = {"name": f"adapter-{i}"}
        if i % 2:
            source["volumeSource"] = {"persistentVolumeClaim": {"claimName": f"adapters-{i}"}}
        else:
            source["image"] = f"registry.example.com/adapters/a{i}:v1"
            source["imagePullSecrets"] = ["pull"]
        adapters.append({"source": source, "strength": "0.5"})
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "largest"},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "labelSelector": {"matchLabels": {"apps": "bench"}},
        },
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}, "adapters": adapters},
    }


# --- the API server ----------------------------------------------------------------------------------


class Server:
    """HTTPS to the local API server with the admin certificate; one kept-alive connection per thread."""

    def __init__(self, state_dir: Path):
        env = dict(line.split("=", 1) for line in (state_dir / "env").read_text().splitlines() if "=" in line)
        self.base = env["API_SERVER"]
        self.pki = state_dir / "pki"
        self.local = threading.local()

    @property
    def http(self) -> requests.Session:
        if not hasattr(self.local, "http"):
            session = requests.Session()
            session.trust_env = False  # a CA bundle from the environment would replace the local CA
            session.verify = str(self.pki / "ca.crt")
            session.cert = (str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
            self.local.http = session
        return self.local.http

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        resp = self.http.request(
            method,
            self.base + path,
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": content_type, "Accept": "application/json"},
            timeout=60,
        )
        if resp.status_code >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:2000]}")
        return resp.json() if resp.content else {}

    def metrics(self) -> dict[str, float]:
        """Sum and count of the CEL and ratcheting histograms (cumulative since the server started)."""
        text = self.http.get(self.base + "/metrics", timeout=60).text
        names = {
            f"{name}_{part}": f"{key}_{part}" for key, name in METRICS.items() for part in ("sum", "count")
        }
        out = dict.fromkeys(names.values(), 0.0)
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in names:
                out[names[name]] = float(value)
        return out

    def version(self) -> str:
        return str(self.call("GET", "/version").get("gitVersion", "?"))

    def install(self, crd: dict[str, Any]) -> None:
        name = crd["metadata"]["name"]
        self.call(
            "PATCH",
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}?fieldManager=cel-bench&force=true",
            crd,
            content_type="application/apply-patch+yaml",
        )

        def established() -> bool:
            got = self.call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conds = {c["type"]: c["status"] for c in got.get("status", {}).get("conditions") or []}
            return conds.get("Established") == "True"

        wait_for(established, 60, f"CRD {name} to be Established")
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]

        def served() -> bool:
            try:
                self.call("GET", f"/apis/{group}/v1beta1/{plural}")
            except RuntimeError:
                return False
            return True

        wait_for(served, 60, f"{plural}.{group} to be served")


# --- measuring ---------------------------------------------------------------------------------------


class Target:
    """One variant's CRD in the cluster: the requests of each operation on it."""

    def __init__(self, server: Server, group: str, docs: list[dict[str, Any]], tag: str):
        self.server = server
        self.group = group
        self.docs = docs
        self.tag = tag
        self.counter = 0
        self.lock = threading.Lock()
        self.created: list[str] = []  # paths of stored objects: the targets of the updates

    def _next(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter

    def _post(self, doc: dict[str, Any], query: str = "") -> tuple[str, Callable[[], Any]]:
        n = self._next()
        doc = copy.deepcopy(doc)
        version = doc["apiVersion"].split("/", 1)[1]
        doc["apiVersion"] = f"{self.group}/{version}"
        doc["metadata"] = {"name": f"{self.tag}-{n}", "namespace": NAMESPACE}
        path = f"/apis/{self.group}/{version}/namespaces/{NAMESPACE}/workspaces"
        return f"{path}/{doc['metadata']['name']}", lambda: self.server.call("POST", path + query, doc)

    def prepare(self, mode: str) -> Callable[[], Any]:
        """The request of one operation, built before the clock starts."""
        if mode == "create_dry_max":
            return self._post(largest(), "?dryRun=All")[1]
        if mode in ("create", "create_dry"):
            path, post = self._post(
                self.docs[self.counter % len(self.docs)], "?dryRun=All" * (mode != "create")
            )
            if mode == "create":
                self.created.append(path)
            return post
        n = self._next()
        target = self.created[n % len(self.created)]
        merge = "application/merge-patch+json"
        if mode == "status":
            status = {"status": {"state": f"Bench{n}"}}
            return lambda: self.server.call("PATCH", f"{target}/status", status, merge)
        annotation = {"metadata": {"annotations": {"cel-bench/n": str(n)}}}
        return lambda: self.server.call("PATCH", target, annotation, merge)


def timed(op: Callable[[], Any]) -> float:
    start = time.perf_counter()
    op()
    return (time.perf_counter() - start) * 1000


def burst(target: Target, count: int) -> tuple[list[float], float]:
    """`count` stored creates from BURST_THREADS threads; per-request ms and the wall ms of all."""
    ops = [target.prepare("create") for _ in range(count)]
    start = time.perf_counter()
    with ThreadPoolExecutor(BURST_THREADS) as pool:
        latencies = list(pool.map(timed, ops))
    return latencies, (time.perf_counter() - start) * 1000


def measure(
    server: Server, targets: dict[str, Target], args: argparse.Namespace, bursts: list[str]
) -> Iterator[Batch]:
    """Every batch: variants in a new shuffled order each round, then the bursts (full, none, --also)."""
    rng = random.Random(args.seed)
    for round_ in range(args.rounds):
        order = list(targets)
        rng.shuffle(order)
        for name in order:
            target = targets[name]
            before = server.metrics()
            for mode in MODES:
                latencies = [timed(target.prepare(mode)) for _ in range(args.batch)]
                after = server.metrics()
                yield round_, name, mode, latencies, {k: after[k] - before[k] for k in after}
                before = after
        if args.burst:
            for name in rng.sample(bursts, len(bursts)):
                before = server.metrics()
                latencies, wall = burst(targets[name], args.burst)
                after = server.metrics()
                delta = {k: after[k] - before[k] for k in after}
                yield round_, name, "burst", latencies, {**delta, "wall_ms": wall}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def summarise(batches: list[Batch]) -> dict[str, dict[str, dict[str, float]]]:
    """variant -> mode -> p50/p95 (ms), ratios to `none`, paired extra over `none` (ms), CEL per op (us)."""
    lat: dict[tuple[str, str], list[float]] = {}
    medians: dict[tuple[str, str, int], float] = {}
    sums: dict[tuple[str, str], dict[str, float]] = {}
    cel: dict[tuple[str, str], list[float]] = {}  # per batch: one preempted batch must not skew the figure
    walls: dict[tuple[str, str], list[float]] = {}
    for round_, name, mode, latencies, delta in batches:
        lat.setdefault((name, mode), []).extend(latencies)
        medians[(name, mode, round_)] = statistics.median(latencies)
        cel.setdefault((name, mode), []).append(delta["cel_eval_sum"] * 1e6 / len(latencies))
        acc = sums.setdefault((name, mode), {})
        for key, value in delta.items():
            acc[key] = acc.get(key, 0.0) + value
        if "wall_ms" in delta:
            walls.setdefault((name, mode), []).append(delta["wall_ms"])
    rounds = sorted({b[0] for b in batches})
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, mode in lat:
        values, floor, acc = lat[(name, mode)], lat[("none", mode)], sums[(name, mode)]
        paired = [medians[(name, mode, r)] - medians[("none", mode, r)] for r in rounds]
        figures = {
            "p50_ms": round(percentile(values, 0.5), 2),
            "p95_ms": round(percentile(values, 0.95), 2),
            "p50_ratio_vs_none": round(percentile(values, 0.5) / percentile(floor, 0.5), 3),
            "p95_ratio_vs_none": round(percentile(values, 0.95) / percentile(floor, 0.95), 3),
            "paired_extra_ms": round(statistics.median(paired), 3),
            "cel_sum_us": round(statistics.median(cel[(name, mode)]), 1),
            "cel_obs": round(acc["cel_eval_count"] / len(values), 2),
        }
        if mode in ("status", "annotate"):
            figures["ratcheting_us"] = round(acc["ratcheting_sum"] * 1e6 / len(values), 1)
        if (name, mode) in walls:
            figures["wall_ms_median"] = round(statistics.median(walls[(name, mode)]), 1)
            figures["creates_per_s"] = round(1000 * len(values) / sum(walls[(name, mode)]), 1)
        out.setdefault(name, {})[mode] = figures
    return out


def levels(rule_id: str) -> int:
    """Schema levels whose validator observes a rule's time: the root, each field, and the items of a list."""
    location = rule_id.rsplit("#", 1)[0]
    if location == "<root>":
        return 1
    return 1 + sum(2 if part.endswith("[]") else 1 for part in location.split("."))


def per_rule(summary: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """Each rule's CEL time (the metric's sum over the levels that observed it, divided by their number)
    and paired client extra: alone (`only`, over none) and/or in the full CRD (`without`: what removing it
    saves)."""
    out = []
    for rule_id, rule in rule_ids():
        entry: dict[str, Any] = {"id": rule_id, "rule": rule["rule"]}
        for kind, base in (("only", "none"), ("without", "full")):
            name = f"{kind}:{rule_id}"
            if name not in summary:
                continue
            sign = 1 if kind == "only" else -1
            entry[kind] = {
                mode: {
                    "cel_us": round(
                        sign
                        * (summary[name][mode]["cel_sum_us"] - summary[base][mode]["cel_sum_us"])
                        / levels(rule_id),
                        1,
                    ),
                    "extra_ms": round(
                        sign
                        * (summary[name][mode]["paired_extra_ms"] - summary[base][mode]["paired_extra_ms"]),
                        3,
                    ),
                }
                for mode in MODES
            }
        out.append(entry)
    return out


def rules_total(rules: list[dict[str, Any]], kind: str) -> dict[str, float]:
    """The per-rule CEL times added up per operation: an estimate of what the whole CRD spends."""
    return {mode: round(sum(r[kind][mode]["cel_us"] for r in rules if kind in r), 1) for mode in MODES}


def run(args: argparse.Namespace) -> dict[str, Any]:
    own = args.state_dir is None
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="cel-cost-"))
    if own:
        start_control_plane(state, max_seconds=3600)
    try:
        server = Server(state)
        docs = examples()
        tag = f"b{int(time.time())}"
        targets: dict[str, Target] = {}
        compile_full: dict[str, float] = {}
        for index, (name, (base, keep)) in enumerate(variants(args.per_rule, args.also).items()):
            crd = variant_crd(index, base, keep)
            before = server.metrics()
            server.install(crd)
            target = Target(server, crd["spec"]["group"], docs, tag)
            for _ in range(len(docs)):  # every example must pass; the handler compiles on first use,
                target.prepare("create")()  # and the stored objects are the first update targets
            target.prepare("create_dry_max")()
            if name == "full":
                after = server.metrics()
                compile_full = {k: after[k] - before[k] for k in ("cel_compile_sum", "cel_compile_count")}
            targets[name] = target
        bursts = ["full", "none", *(spec.partition("=")[0] for spec in args.also)]
        summary = summarise(list(measure(server, targets, args, bursts)))
        rules = per_rule(summary)
        return {
            "kube_apiserver": server.version(),
            "examples": len(docs),
            "rounds": args.rounds,
            "ops_per_variant_and_mode": args.rounds * args.batch,
            "burst": f"{args.rounds} x {args.burst} creates from {BURST_THREADS} threads"
            if args.burst
            else None,
            **{name: summary[name] for name in bursts},
            "full_install_compile_ms": round(compile_full.get("cel_compile_sum", 0.0) * 1000, 2),
            "full_install_compilations": int(compile_full.get("cel_compile_count", 0)),
            "rules": rules,
            "rules_cel_us_total": {
                kind: rules_total(rules, kind)
                for kind in ("only", "without")
                if any(kind in r for r in rules)
            },
            "load_avg_1m_end": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
        }
    finally:
        if own:
            stop_control_plane(state)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=10, help="operations of each kind per variant and round")
    parser.add_argument("--burst", type=int, default=64, help="creates per burst (0: no bursts)")
    parser.add_argument("--per-rule", choices=("only", "without", "both", "none"), default="only")
    parser.add_argument("--state-dir", type=Path, help="a running hack/control-plane.sh's STATE_DIR to use")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="one more variant from a CRD manifest (e.g. git show REV:charts/kaito-tune/crds/...yaml)",
    )
    args = parser.parse_args()
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
