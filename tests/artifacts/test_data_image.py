"""A data image (KAITO layout, possibly built FROM a base image) becomes the data directory."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

from artifacts import layout
from artifacts import mediatypes as mt
from artifacts.reference import Reference
from artifacts.registry import ClientOptions, RegistryClient
from tests.artifacts.conftest import snapshot
from tests.artifacts.test_unsafe_content import publish
from tests.fixtures.registry import Registry
from tuning_controller.cli import main


def layer(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return gzip.compress(buffer.getvalue())


def test_fetch_data_from_an_image_extracts_only_slash_data_with_whiteouts(
    open_registry: Registry, tmp_path: Path
) -> None:
    base = layer({"bin/sh": b"\x7fELF", "etc/passwd": b"root:x:0:0"})
    data = layer(
        {"data/train.jsonl": b'{"messages": []}\n', "data/sub/eval.jsonl": b"{}\n", "data/old.csv": b"a\n"}
    )
    update = layer({"data/.wh.old.csv": b""}, symlinks={"data/latest.jsonl": "train.jsonl"})
    ref = publish(
        open_registry,
        "data/images",
        ClientOptions(),
        [
            (mt.DOCKER_LAYER_TAR_GZIP, base, {}),
            (mt.OCI_LAYER_TAR_GZIP, data, {}),
            (mt.OCI_LAYER_TAR_GZIP, update, {}),
        ],
    )
    dest = tmp_path / "mnt-data"
    dest.mkdir()  # the pod's data volume already exists

    assert main(["fetch-data", "--image", ref, "--dest", str(dest)]) == 0

    assert snapshot(dest) == {
        "train.jsonl": b'{"messages": []}\n',
        "sub/eval.jsonl": b"{}\n",
        "latest.jsonl": b'{"messages": []}\n',
    }
    assert (dest / "latest.jsonl").is_symlink()


def test_an_index_resolves_to_the_linux_amd64_image(open_registry: Registry, tmp_path: Path) -> None:
    amd64 = publish(
        open_registry, "data/multi", ClientOptions(), [(mt.OCI_LAYER_TAR_GZIP, layer({"data/a": b"amd"}), {})]
    )
    client = RegistryClient(Reference.parse(amd64), ClientOptions(), push=True)
    amd64_manifest = client.get_manifest("v1")
    publish(
        open_registry, "data/multi", ClientOptions(), [(mt.OCI_LAYER_TAR_GZIP, layer({"data/a": b"arm"}), {})]
    )
    arm64_manifest = client.get_manifest("v1")
    entries = [
        layout.descriptor(mt.OCI_MANIFEST, m.digest, len(m.raw))
        | {"platform": {"os": "linux", "architecture": arch}}
        for m, arch in ((arm64_manifest, "arm64"), (amd64_manifest, "amd64"))
    ]
    index = layout.encode({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries})
    client.put_manifest(index, mt.OCI_INDEX, "multi")

    assert main(["pull", open_registry.ref("data/multi", "multi"), str(tmp_path / "out")]) == 0
    assert snapshot(tmp_path / "out") == {"a": b"amd"}
