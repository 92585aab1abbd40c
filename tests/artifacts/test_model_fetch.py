"""Base-model weights as OCI model artifacts: `model push`, `fetch-model` and the shared model cache,
against the real loopback registry (htpasswd) and the tiny preset built here."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from artifacts.errors import ArtifactError, InvalidInputError
from artifacts.fetch_model import fetch_model
from artifacts.modelcache import ModelCache, oci_key
from artifacts.models import check_safetensors, push_model
from artifacts.registry import ClientOptions
from presets.tiny import ensure_tiny_preset
from tests.artifacts.conftest import snapshot


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ensure_tiny_preset()


@pytest.fixture
def tiny_ref(oci_registry, options, tiny_dir) -> str:
    reference = oci_registry.ref("models/tiny-llama", "local")
    push_model(str(tiny_dir), reference, options=options, preset="tiny-llama")
    return reference


def test_fetch_through_the_cache_downloads_once_and_links_the_entry(tiny_ref, options, tiny_dir, tmp_path):
    cache = ModelCache(tmp_path / "cache")
    first = fetch_model(image=tiny_ref, dest=tmp_path / "pod1" / "weights", cache=cache, options=options)
    assert not first.cached and first.bytes_fetched >= (tiny_dir / "model.safetensors").stat().st_size
    assert first.reference.endswith("@" + first.digest) and first.path == cache.path(oci_key(first.digest))
    assert (tmp_path / "pod1" / "weights").resolve() == first.path
    assert snapshot(tmp_path / "pod1" / "weights") == snapshot(tiny_dir)
    # a second pod (another Job) on the same cache: nothing downloaded, same content
    second = fetch_model(image=tiny_ref, dest=tmp_path / "pod2" / "weights", cache=cache, options=options)
    assert (second.cached, second.bytes_fetched, second.digest) == (True, 0, first.digest)
    assert json.loads(json.dumps(second.summary()))["reference"] == first.reference


def test_config_only_fetches_no_weights(tiny_ref, options, tmp_path):
    result = fetch_model(image=tiny_ref, dest=tmp_path / "model", options=options, config_only=True)
    names = {p.name for p in (tmp_path / "model").iterdir()}
    assert "config.json" in names and "tokenizer.json" in names
    assert not any(n.endswith(".safetensors") for n in names), names
    assert result.bytes_fetched < 200_000


def test_concurrent_fetches_fill_the_entry_once(tmp_path):
    cache = ModelCache(tmp_path / "cache")
    fills: list[int] = []

    def fill(dest: Path) -> None:
        fills.append(1)
        staging = dest.parent / f".{dest.name}.partial-x"
        staging.mkdir()
        time.sleep(0.3)
        (staging / "config.json").write_text("{}")
        os.rename(staging, dest)

    results: list[tuple[Path, bool]] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_fill("oci-sha256-ab", fill)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fills) == 1
    assert sorted(cached for _, cached in results) == [False, True, True, True]


def test_a_half_written_entry_is_never_used(tmp_path):
    cache = ModelCache(tmp_path / "cache")
    cache.entries.mkdir(parents=True)
    (cache.entries / ".oci-sha256-ab.partial-dead").mkdir()  # a fetch killed mid-way

    def fill(dest: Path) -> None:
        dest.mkdir()
        (dest / "config.json").write_text("{}")

    path, cached = cache.get_or_fill("oci-sha256-ab", fill)
    assert not cached and (path / "config.json").is_file()
    assert [p.name for p in cache.entries.iterdir()] == ["oci-sha256-ab"]


def test_eviction_is_least_recently_used_and_spares_recent_and_kept_entries(tmp_path):
    cache = ModelCache(tmp_path / "cache")
    for key in ("old", "older", "new", "kept"):
        cache.get_or_fill(key, lambda dest: (dest.mkdir(), (dest / "w").write_bytes(b"x" * 1000)))
        stamp = cache.root / "used" / key
        age = {"old": 7200, "older": 9000, "new": 10, "kept": 9999}[key]
        os.utime(stamp, (time.time() - age, time.time() - age))
    evicted = cache.evict(max_bytes=2500, keep="kept")
    assert evicted == ["older", "old"]
    assert sorted(e.key for e in cache.listing()) == ["kept", "new"]
    assert cache.evict(max_bytes=0, keep="kept") == []  # "new" was used within the grace period


def test_registry_errors_name_the_reference(oci_registry, options, tiny_ref, tmp_path, docker_config):
    missing = oci_registry.ref("models/tiny-llama", "no-such-tag")
    with pytest.raises(ArtifactError, match="no-such-tag"):
        fetch_model(image=missing, dest=tmp_path / "a", options=options)
    wrong_digest = tiny_ref.rsplit(":", 1)[0] + "@sha256:" + "0" * 64
    with pytest.raises(ArtifactError, match="0000000000"):
        fetch_model(image=wrong_digest, dest=tmp_path / "b", options=options)
    bad = tmp_path / "bad.json"
    config = json.loads(docker_config.read_text())
    for entry in config["auths"].values():
        entry["auth"] = "dXNlcjp3cm9uZw=="  # user:wrong
    bad.write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=r"(?i)unauthori|denied|401"):
        fetch_model(image=tiny_ref, dest=tmp_path / "c", options=ClientOptions(docker_config=bad))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_a_registry_that_dies_mid_pull_leaves_no_entry_and_a_retry_fills_it(oci_registry, tiny_ref, tmp_path):
    options = ClientOptions(
        docker_config=tmp_path / "config.json", retries=0, chunk_bytes=64 * 1024, backoff_s=0.1
    )
    options.docker_config.write_text(oci_registry.docker_config_json())
    cache = ModelCache(tmp_path / "cache")
    received: list[int] = []

    def die_after_the_first_bytes(count: int) -> None:
        received.append(count)
        if len(received) == 1:
            oci_registry.stop()

    try:
        with pytest.raises(ArtifactError, match="models/tiny-llama"):
            fetch_model(
                image=tiny_ref,
                dest=tmp_path / "pod" / "weights",
                cache=cache,
                options=options,
                progress=die_after_the_first_bytes,
            )
    finally:
        oci_registry.start()
    assert received, "the registry was never stopped: the test did not exercise a failure"
    assert cache.listing() == [] and not (tmp_path / "pod" / "weights").exists()
    assert [p.name for p in cache.entries.iterdir()] == []  # no half-written entry left behind
    retry = fetch_model(image=tiny_ref, dest=tmp_path / "pod" / "weights", cache=cache, options=options)
    assert not retry.cached and (tmp_path / "pod" / "weights" / "model.safetensors").is_file()


def test_model_push_refuses_a_truncated_safetensors_file(tiny_dir, tmp_path, oci_registry, options):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(InvalidInputError, match="truncated"):
        push_model(str(broken), oci_registry.ref("models/broken", "v1"), options=options)
    weights.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(InvalidInputError, match="header length"):
        check_safetensors(weights)
