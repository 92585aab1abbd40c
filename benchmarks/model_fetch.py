"""Base-model transfer on the loopback registry: ``model push`` and ``fetch-model`` against ``skopeo copy``,
and the ``fetch-model`` init container's time to ready with a cold and a warm model cache.

    .venv/bin/python benchmarks/model_fetch.py                   # 4 GiB model-like directory
    .venv/bin/python benchmarks/model_fetch.py --size-gib 0.25   # smoke run

The model: a few safetensors shards of random (incompressible) bytes, each with a valid header (u64 length,
JSON declaring U8 tensors whose data_offsets cover the file, so ``push_model``'s header check passes), the
shard index, config.json, tokenizer.json, tokenizer_config.json and generation_config.json.

ours:     ``artifacts.models.push_model`` of the directory (header check, then a ModelPack push, one raw
          layer per file) and ``artifacts.fetch_model.fetch_model`` without a cache into an empty directory
          (pin the tag, pull), each in its own child process whose peak RSS is reported (``peak_rss_mib``,
          the larger of the two).
baseline: ``skopeo copy`` of the same content (same manifest, same blobs) from an OCI layout directory to
          a registry, and back from the registry into a new OCI layout directory.
init:     ``python -m tuning_controller.cli fetch-model --image REF --dest D --cache C --summary-file S``,
          what the pod's init container runs, as a child process: cold (empty cache: pull into a cache
          entry, link D to it) and warm (a second pod on the same cache, another D: pin the tag, find the
          entry, link; it must report ``bytesFetched`` 0). Seconds are the wall time of the whole process
          (interpreter start, imports, registry round trips); the goal for warm is under 1 s.

Each push goes to a fresh registry (its own storage) so neither side can skip or mount blobs. Registries
are Debian's ``docker-registry`` with htpasswd auth on 127.0.0.1 over plain HTTP (hack/servers.py).
MB/s are 10^6 bytes of layer content per second of wall time of the transfer itself; dirty pages are
flushed (``sync``) before each timed step. Prints one JSON object.

Not measured: TLS, a remote registry or a real network (loopback has no latency and no bandwidth limit), a
registry other than distribution's with filesystem storage, containerd's or CRI-O's own image pull (the
model is an artifact fetched by the init container, not an image), a cold page cache (the source files
and the registry's blobs are read from memory), concurrent pods filling one cache entry, and eviction.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.artifact_throughput import (  # noqa: E402
    child,
    run_ours,
    run_skopeo,
    skopeo_copies,
    transfer_figures,
    write_oci_layout,
)

GIB = 1 << 30
SHARD_SHARES = (0.4, 0.4, 0.2)  # like a 3-shard checkpoint: two full shards and the rest
TENSOR_BYTES = 128 << 20  # at most, per tensor
WARM_GOAL_S = 1.0
COPIES_ON_DISK = 3.2  # the source, a registry's blobs, one more copy (each is deleted when measured)
CONFIG_FILES = {
    "config.json": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "vocab_size": 32000,
        "torch_dtype": "bfloat16",
    },
    "tokenizer_config.json": {"model_max_length": 4096, "bos_token": "<s>", "eos_token": "</s>"},
    "generation_config.json": {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False},
    # ~1 MB, the order of a real BPE tokenizer.json
    "tokenizer.json": {"model": {"type": "BPE", "vocab": {f"tok{i:05d}": i for i in range(32000)}}},
}


def write_shard(path: Path, size: int, index: int) -> dict[str, int]:
    """A safetensors file of about ``size`` bytes: header, then U8 tensors of random bytes filling the rest.
    Returns {tensor name: bytes}."""
    data = max(size - 4096, 1)  # room for the header
    tensors, offset = {}, 0
    while offset < data:
        count = min(TENSOR_BYTES, data - offset)
        name = f"model.layers.{index}.block{len(tensors)}.weight"
        tensors[name] = {"dtype": "U8", "shape": [count], "data_offsets": [offset, offset + count]}
        offset += count
    header = json.dumps({"__metadata__": {"format": "pt"}, **tensors}).encode()
    header += b" " * (-len(header) % 8)  # the spec's padding: data starts 8-byte aligned
    block = 8 << 20
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(header)) + header)
        remaining = data
        while remaining:
            count = min(block, remaining)
            out.write(os.urandom(count))
            remaining -= count
    return {name: t["data_offsets"][1] - t["data_offsets"][0] for name, t in tensors.items()}


def make_model(root: Path, size_gib: float) -> tuple[int, int]:
    """The model-like directory; returns (total bytes, files)."""
    root.mkdir(parents=True)
    weight_map, total_tensor_bytes = {}, 0
    shards = len(SHARD_SHARES)
    for number, share in enumerate(SHARD_SHARES, 1):
        name = f"model-{number:05d}-of-{shards:05d}.safetensors"
        tensors = write_shard(root / name, int(size_gib * GIB * share), number)
        weight_map |= dict.fromkeys(tensors, name)
        total_tensor_bytes += sum(tensors.values())
    index = {"metadata": {"total_size": total_tensor_bytes}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for name, document in CONFIG_FILES.items():
        (root / name).write_text(json.dumps(document))
    files = list(root.iterdir())
    return sum(f.stat().st_size for f in files), len(files)


def model_child(argv: list[str]) -> None:
    """Our push (``push_model``) or our pull (``fetch_model``, no cache) in this fresh process."""
    from artifacts.fetch_model import fetch_model
    from artifacts.models import push_model

    actions = {
        "push": lambda path, reference, options: push_model(
            str(path), reference, options=options, preset="bench-model"
        ),
        "fetch": lambda path, reference, options: fetch_model(image=reference, dest=path, options=options),
    }
    child(argv, actions)


def run_init_container(reference: str, dest: Path, cache: Path, docker_config: Path) -> dict:
    """``fetch-model`` as the pod runs it; wall seconds and peak RSS of the process, and its summary."""
    summary = dest.parent / f"{dest.name}.summary.json"
    command = [sys.executable, "-m", "tuning_controller.cli", "fetch-model", "--image", reference]
    command += ["--dest", str(dest), "--cache", str(cache), "--summary-file", str(summary)]
    command += ["--docker-config", str(docker_config)]
    with tempfile.TemporaryFile() as output:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not every child's
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            output.seek(0)
            raise RuntimeError(f"fetch-model exited {process.returncode}: {output.read().decode()}")
    return {
        "seconds": seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "summary": json.loads(summary.read_text()),
    }


def timed_skopeo(*args: str) -> float:
    os.sync()
    return run_skopeo(*args)


def timed_ours(action: str, path: Path, reference: str, docker_config: Path) -> dict:
    os.sync()
    return run_ours(action, path, reference, docker_config, script=__file__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gib", type=float, default=4, help="total size of the model directory")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_child(args.child)
        return

    from hack.servers import launch_registry, write_docker_config

    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < COPIES_ON_DISK * args.size_gib * GIB:
        parser.exit(
            1,
            f"{tempfile.gettempdir()} has {free / GIB:.1f} GiB free; this run needs about "
            f"{COPIES_ON_DISK * args.size_gib:.1f} GiB\n",
        )
    work = Path(tempfile.mkdtemp(prefix="model-fetch-bench-"))
    registries = []
    try:
        source = work / "model"
        total, files = make_model(source, args.size_gib)
        ours_registry = launch_registry(work / "registry-ours", with_auth=True)
        registries.append(ours_registry)
        config = write_docker_config(
            work / "config.json", ours_registry.host, ours_registry.username, ours_registry.password
        )
        reference = ours_registry.ref("bench/model")

        pushed = timed_ours("push", source, reference, config)
        pulled = timed_ours("fetch", work / "pulled", reference, config)
        shutil.rmtree(work / "pulled")  # disk: at most three copies at any time (COPIES_ON_DISK)

        os.sync()
        cache = work / "cache"
        cold = run_init_container(reference, work / "pod-1" / "weights", cache, config)
        warm = run_init_container(reference, work / "pod-2" / "weights", cache, config)
        if cold["summary"]["bytesFetched"] != total or cold["summary"]["cached"]:
            raise RuntimeError(f"the cold fetch-model did not fetch the model: {cold['summary']}")
        if warm["summary"]["bytesFetched"] != 0 or not warm["summary"]["cached"]:
            raise RuntimeError(f"the warm fetch-model fetched again: {warm['summary']}")
        shutil.rmtree(cache)

        layout_dir = work / "layout"
        write_oci_layout(source, layout_dir, reference, config)
        ours_registry.stop()
        registries.remove(ours_registry)
        shutil.rmtree(ours_registry.workdir)
        skopeo_registry = launch_registry(work / "registry-skopeo", with_auth=True)
        registries.append(skopeo_registry)
        skopeo_creds = f"{skopeo_registry.username}:{skopeo_registry.password}"
        skopeo_push, skopeo_pull = skopeo_copies(
            layout_dir, skopeo_registry.ref("bench/model"), skopeo_creds, work / "back", run=timed_skopeo
        )

        mb = total / 1e6
        result = {
            "size_gib": round(total / GIB, 2),
            "files": files,
            **transfer_figures(total, pushed, pulled, skopeo_push, skopeo_pull),
            "init_cold_s": round(cold["seconds"], 2),
            "init_cold_mb_s": round(mb / cold["seconds"], 1),
            "init_cold_peak_rss_mib": round(cold["peak_rss_mib"], 1),
            "init_warm_s": round(warm["seconds"], 3),
            "init_warm_bytes_fetched": warm["summary"]["bytesFetched"],
            "init_warm_goal": f"< {WARM_GOAL_S:g} s",
            "init_warm_goal_met": warm["seconds"] < WARM_GOAL_S,
            "cpu_count": os.cpu_count(),
        }
        print(json.dumps(result))
    finally:
        for registry in registries:
            registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
