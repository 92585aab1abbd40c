"""Standard tools read what we push, and we read what they copy: skopeo inspect and skopeo copy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from artifacts import mediatypes as mt
from artifacts.pull import pull
from artifacts.push import push
from artifacts.registry import ClientOptions
from tests.artifacts.conftest import snapshot
from tests.fixtures.registry import Registry


def skopeo(*args: str) -> str:
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("fmt", ["modelpack", "kaito"])
def test_skopeo_inspects_and_copies_our_artifact(
    fmt: str, adapter_dir: Path, oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    creds = f"{oci_registry.username}:{oci_registry.password}"
    source = oci_registry.ref(f"interop/{fmt}", "v1")
    copy = oci_registry.ref(f"interop/{fmt}-copy", "v1")
    result = push(adapter_dir, source, fmt=fmt, options=options)

    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", "--creds", creds, f"docker://{source}"))
    assert raw["mediaType"] == mt.OCI_MANIFEST
    assert raw.get("artifactType") == (mt.MODEL_ARTIFACT if fmt == "modelpack" else None)
    if fmt == "kaito":  # a real image: skopeo's image inspection works too
        image = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", creds, f"docker://{source}"))
        assert image["Digest"] == result.digest and image["Os"] == "linux"

    layout = tmp_path / "oci-layout"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", creds, f"docker://{source}", f"oci:{layout}:v1")
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout}:v1", f"docker://{copy}")

    pulled = pull(copy, tmp_path / "out", options=options)
    assert pulled.digest == result.digest  # skopeo kept the manifest byte for byte
    assert snapshot(tmp_path / "out") == snapshot(adapter_dir)
