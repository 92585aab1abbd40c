"""Artifact push/pull throughput on the loopback registry: this package against ``skopeo copy``.

    .venv/bin/python benchmarks/artifact_throughput.py                  # 1 GiB adapter-like directory
    .venv/bin/python benchmarks/artifact_throughput.py --size-mib 64    # smoke run

ours:     ``artifacts.push.push`` of the directory (ModelPack layout, one raw layer per file) and
          ``artifacts.pull.pull`` of it into an empty directory, each in its own child process whose
          peak RSS is reported (``peak_rss_mib``, the larger of the two).
baseline: ``skopeo copy`` of the same content (same manifest, same blobs) from an OCI layout directory
          to the registry, and back from the registry into a new OCI layout directory.

Each push goes to a fresh registry (its own storage) so neither side can skip or mount blobs. Both
registries are Debian's ``docker-registry`` with htpasswd auth on 127.0.0.1. MB/s are 10^6 bytes of
layer content per second of wall time of the transfer itself. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Shares of the total size, like a merged checkpoint next to its adapter: several large files, a few small.
FILE_SHARES = {
    "model-00001-of-00002.safetensors": 0.45,
    "model-00002-of-00002.safetensors": 0.35,
    "adapter_model.safetensors": 0.15,
    "optimizer_shard.bin": 0.05,
}
SMALL_FILES = {
    "adapter_config.json": b'{"r": 16, "lora_alpha": 32, "peft_type": "LORA"}',
    "tokenizer.json": b'{"model": {"type": "BPE"}}' * 200,
    "README.md": b"# benchmark adapter\n",
}


def make_adapter(root: Path, size_mib: int) -> int:
    """Random (incompressible) weights so no layer dedupes or compresses; returns total bytes."""
    root.mkdir(parents=True)
    block = 8 << 20
    total = 0
    for name, share in FILE_SHARES.items():
        remaining = int(size_mib * share) << 20
        with (root / name).open("wb") as out:
            while remaining:
                count = min(block, remaining)
                out.write(os.urandom(count))
                remaining -= count
        total += (root / name).stat().st_size
    for name, data in SMALL_FILES.items():
        (root / name).write_bytes(data)
        total += len(data)
    return total


def write_oci_layout(source: Path, layout_dir: Path, reference: str, docker_config: Path) -> None:
    """An OCI layout of exactly what we pushed: our manifest and config, the files as blobs (hard links)."""
    from artifacts.reference import Reference
    from artifacts.registry import ClientOptions, RegistryClient

    client = RegistryClient(Reference.parse(reference), ClientOptions(docker_config=docker_config))
    manifest = client.get_manifest(Reference.parse(reference).target)
    blobs = layout_dir / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / manifest.digest.split(":")[1]).write_bytes(manifest.raw)
    config = manifest.document["config"]
    client.download_blob(config, blobs / config["digest"].split(":")[1])
    for layer in manifest.document["layers"]:
        target = blobs / layer["digest"].split(":")[1]
        if not target.exists():
            os.link(source / layer["annotations"]["org.cncf.model.filepath"], target)
    (layout_dir / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entry = {
        "mediaType": manifest.media_type,
        "digest": manifest.digest,
        "size": len(manifest.raw),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }
    (layout_dir / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))


def child(argv: list[str], actions: dict[str, Callable[[Path, str, Any], object]] | None = None) -> None:
    """Runs one of our transfers in this (fresh) process; prints seconds and peak RSS.

    ``argv`` is ACTION PATH REFERENCE DOCKER_CONFIG; ``actions`` maps ACTION to ``fn(path, reference,
    options)``, imported before the clock starts (default: this benchmark's push and pull)."""
    from artifacts.pull import pull
    from artifacts.push import push
    from artifacts.registry import ClientOptions

    if actions is None:
        actions = {
            "push": lambda path, reference, options: push(path, reference, options=options),
            "pull": lambda path, reference, options: pull(reference, path, options=options),
        }
    action, path, reference, docker_config = argv
    options = ClientOptions(docker_config=Path(docker_config))
    start = time.perf_counter()
    actions[action](Path(path), reference, options)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_kib / 1024}))


def run_ours(action: str, path: Path, reference: str, docker_config: Path, script: str = __file__) -> dict:
    """``script --child ACTION PATH REFERENCE DOCKER_CONFIG`` in a fresh interpreter; what :func:`child`
    printed there."""
    done = subprocess.run(
        [sys.executable, script, "--child", action, str(path), reference, str(docker_config)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_skopeo(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run(["skopeo", "copy", "--quiet", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def skopeo_copies(
    layout_dir: Path, ref: str, creds: str, back: Path, run: Callable[..., float] = run_skopeo
) -> tuple[float, float]:
    """Seconds of the baseline: ``skopeo copy`` of the OCI layout to ``ref`` and back into ``back``."""
    target = f"docker://{ref}"
    push = run("--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout_dir}:v1", target)
    pull = run("--src-tls-verify=false", "--src-creds", creds, target, f"oci:{back}:v1")
    return push, pull


def transfer_figures(total: int, pushed: dict, pulled: dict, skopeo_push: float, skopeo_pull: float) -> dict:
    """MB/s of ours and of skopeo side by side, their ratios and our peak RSS (the JSON's shared keys)."""
    mb = total / 1e6
    return {
        "push_mb_s": round(mb / pushed["seconds"], 1),
        "pull_mb_s": round(mb / pulled["seconds"], 1),
        "skopeo_push_mb_s": round(mb / skopeo_push, 1),
        "skopeo_pull_mb_s": round(mb / skopeo_pull, 1),
        "push_ratio_vs_skopeo": round(skopeo_push / pushed["seconds"], 2),
        "pull_ratio_vs_skopeo": round(skopeo_pull / pulled["seconds"], 2),
        "peak_rss_mib": round(max(pushed["peak_rss_mib"], pulled["peak_rss_mib"]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="total size of the adapter directory")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    from tests.fixtures.registry import launch_registry, write_docker_config

    work = Path(tempfile.mkdtemp(prefix="artifact-bench-"))
    registries = []
    try:
        source = work / "adapter"
        total = make_adapter(source, args.size_mib)
        ours_registry = launch_registry(work / "registry-ours", with_auth=True)
        registries.append(ours_registry)
        skopeo_registry = launch_registry(work / "registry-skopeo", with_auth=True)
        registries.append(skopeo_registry)
        config = write_docker_config(
            work / "config.json", ours_registry.host, ours_registry.username, ours_registry.password
        )
        skopeo_creds = f"{skopeo_registry.username}:{skopeo_registry.password}"

        reference = ours_registry.ref("bench/adapter")
        pushed = run_ours("push", source, reference, config)
        pulled = run_ours("pull", work / "pulled", reference, config)

        layout_dir = work / "layout"
        write_oci_layout(source, layout_dir, reference, config)
        skopeo_push, skopeo_pull = skopeo_copies(
            layout_dir, skopeo_registry.ref("bench/adapter"), skopeo_creds, work / "back"
        )

        result = {
            "size_mib": round(total / (1 << 20), 1),
            "files": len(FILE_SHARES) + len(SMALL_FILES),
            **transfer_figures(total, pushed, pulled, skopeo_push, skopeo_pull),
            "cpu_count": os.cpu_count(),
        }
        print(json.dumps(result))
    finally:
        for registry in registries:
            registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
