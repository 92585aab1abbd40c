"""Artifacts crafted to write outside the destination, or to be too big, are refused before harm."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from artifacts import layout
from artifacts import mediatypes as mt
from artifacts.errors import SizeLimitError, UnsafeContentError
from artifacts.pull import pull
from artifacts.reference import Reference
from artifacts.registry import ClientOptions, RegistryClient, sha256_digest
from tests.fixtures.registry import Registry

EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"  # what `oras push` puts in the config by default


def publish(
    registry: Registry,
    repository: str,
    options: ClientOptions,
    layers: list[tuple[str, bytes, dict]],
    config_media_type: str = mt.OCI_IMAGE_CONFIG,
) -> str:
    """Push hand-made layers (media type, bytes, annotations) under an image config (or, given
    ``config_media_type``, oras's empty config); returns the ref."""
    ref = registry.ref(repository)
    client = RegistryClient(Reference.parse(ref), options, push=True)
    descriptors = []
    for media_type, data, layer_annotations in layers:
        digest = sha256_digest(data)
        client.put_small_blob(data, digest)
        descriptors.append(layout.descriptor(media_type, digest, len(data), layer_annotations))
    config = layout.encode(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        if config_media_type in mt.IMAGE_CONFIG_TYPES
        else {}
    )
    client.put_small_blob(config, sha256_digest(config))
    config_desc = layout.descriptor(config_media_type, sha256_digest(config), len(config))
    client.put_manifest(layout.manifest(config_desc, descriptors, {}, None), mt.OCI_MANIFEST, "v1")
    return ref


def tar_layer(*members: tarfile.TarInfo, payload: bytes = b"evil") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            if member.isfile():
                member.size = len(payload)
                tar.addfile(member, io.BytesIO(payload))
            else:
                tar.addfile(member)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize("path", ["../escape.txt", "/etc/passwd", "a/../../escape.txt", "", "a\\..\\b"])
def test_filepath_annotation_traversal_is_refused(
    path: str, oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    ref = publish(
        oci_registry,
        "unsafe/annotation",
        options,
        [(mt.MODEL_WEIGHT_RAW, b"x", {mt.ANNOTATION_FILEPATH: path})],
    )
    with pytest.raises(UnsafeContentError, match="not a plain relative path"):
        pull(ref, tmp_path / "dest" / "adapter", options=options)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "dest" / "adapter").exists()


@pytest.mark.parametrize(
    "members",
    [
        [member("data/../../escape.txt")],
        [member("data/link", tarfile.SYMTYPE, "../../escape-dir"), member("data/link/escape.txt")],
        [member("data/abs", tarfile.SYMTYPE, "/etc")],
        [member("data/hard", tarfile.LNKTYPE, "etc/passwd")],
        # CVE-2025-4517's class: links that stay inside one by one but climb out in a chain, which
        # Python's "data" filter lets through before 3.11.13 (this machine runs 3.11.7)
        [
            member("data/here", tarfile.SYMTYPE, "."),
            member("data/up", tarfile.SYMTYPE, "here/../.."),
            member("data/up/escape.txt"),
        ],
        [
            member("data/sub", tarfile.DIRTYPE),
            member("data/sub/up", tarfile.SYMTYPE, "../x"),
            member("data/x"),
        ],
        [
            member("data/dir", tarfile.SYMTYPE, "real"),
            member("data/real", tarfile.DIRTYPE),
            member("data/dir/f"),
        ],
    ],
    ids=[
        "dotdot",
        "symlink-escape",
        "absolute-symlink",
        "hardlink-outside-data",
        "symlink-chain",
        "symlink-with-dotdot",
        "member-under-a-symlink",
    ],
)
def test_tar_member_traversal_is_refused(
    members: list[tarfile.TarInfo], oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    ref = publish(oci_registry, "unsafe/tar", options, [(mt.OCI_LAYER_TAR, tar_layer(*members), {})])
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(UnsafeContentError):
        pull(ref, dest, options=options)
    assert not dest.exists()
    assert not list((tmp_path / "deep").iterdir())  # the staging directory is gone too
    assert not any(p.name.startswith("escape") for p in tmp_path.rglob("*"))


FOLDER = {mt.ANNOTATION_TITLE: "bundle", mt.ANNOTATION_ORAS_UNPACK: "true"}


@pytest.mark.parametrize(
    "members",
    [
        [member("bundle/ok.txt"), member("other/escape.txt")],
        [member("bundle/../escape.txt")],
        [member("bundle/link", tarfile.SYMTYPE, "../../escape-dir"), member("bundle/link/escape.txt")],
        [member("bundle/abs", tarfile.SYMTYPE, "/etc")],
        [member("bundle/hard", tarfile.LNKTYPE, "etc/passwd")],
    ],
    ids=["outside-the-folder", "dotdot", "symlink-escape", "absolute-symlink", "hardlink-outside-folder"],
)
def test_oras_folder_members_must_stay_in_the_titled_folder(
    members: list[tarfile.TarInfo], oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    layer = gzip.compress(tar_layer(*members))
    ref = publish(
        oci_registry, "unsafe/folder", options, [(mt.OCI_LAYER_TAR_GZIP, layer, FOLDER)], EMPTY_CONFIG
    )
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(UnsafeContentError):
        pull(ref, dest, options=options)
    assert not dest.exists()
    assert not list((tmp_path / "deep").iterdir())
    assert not any(p.name.startswith("escape") for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("title", ["../bundle", "/bundle", "a/../../bundle"])
def test_oras_folder_title_traversal_is_refused(
    title: str, oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    layer = gzip.compress(tar_layer(member(f"{title}/escape.txt")))
    annotations = FOLDER | {mt.ANNOTATION_TITLE: title}
    ref = publish(
        oci_registry, "unsafe/title", options, [(mt.OCI_LAYER_TAR_GZIP, layer, annotations)], EMPTY_CONFIG
    )
    with pytest.raises(UnsafeContentError, match="not a plain relative path"):
        pull(ref, tmp_path / "dest", options=options)
    assert not any(p.name.startswith("escape") for p in tmp_path.rglob("*"))


def test_an_oras_folder_keeps_whiteout_names_as_plain_files(
    oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    """Whiteouts are an image layer rule; in a folder oras packed, .wh.x is just a file named so."""
    layer = gzip.compress(tar_layer(member("bundle/x"), member("bundle/.wh.x"), payload=b"kept"))
    ref = publish(oci_registry, "folder/wh", options, [(mt.OCI_LAYER_TAR_GZIP, layer, FOLDER)], EMPTY_CONFIG)
    result = pull(ref, tmp_path / "dest", options=options)
    assert result.format == "files" and result.files == 2
    assert sorted(p.name for p in (tmp_path / "dest" / "bundle").iterdir()) == [".wh.x", "x"]


def test_size_cap_is_enforced_before_download(
    oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    ref = publish(
        oci_registry,
        "unsafe/big",
        options,
        [(mt.MODEL_WEIGHT_RAW, b"x" * 4096, {mt.ANNOTATION_FILEPATH: "w.bin"})],
    )
    small = ClientOptions(docker_config=options.docker_config, max_bytes=1024)
    with pytest.raises(SizeLimitError, match="over the 1024-byte cap"):
        pull(ref, tmp_path / "out", options=small)


def test_gzip_bomb_is_stopped_at_the_cap(
    oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    layer = gzip.compress(tar_layer(member("data/zeros.bin"), payload=bytes(1 << 20)))
    ref = publish(oci_registry, "unsafe/bomb", options, [(mt.OCI_LAYER_TAR_GZIP, layer, {})])
    cap = ClientOptions(docker_config=options.docker_config, max_bytes=64 * 1024)
    assert len(layer) < cap.max_bytes  # the blob passes the cap; what it unpacks to does not
    with pytest.raises(SizeLimitError, match="unpacks to more"):
        pull(ref, tmp_path / "out", options=cap)
    assert not (tmp_path / "out").exists()
