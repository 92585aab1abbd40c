"""Push then pull gives back the same bytes, in both formats, with the facts the config promises."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from artifacts import mediatypes as mt
from artifacts.errors import InvalidInputError
from artifacts.pull import inspect, pull
from artifacts.push import push
from artifacts.reference import Reference
from artifacts.registry import ClientOptions, RegistryClient
from tests.artifacts.conftest import snapshot
from tests.fixtures.registry import Registry
from tuning_controller.cli import main


@pytest.mark.parametrize("fmt", ["modelpack", "kaito"])
def test_round_trip_is_byte_identical(
    fmt: str, adapter_dir: Path, oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    before = snapshot(adapter_dir)
    result = push(adapter_dir, oci_registry.ref(f"rt/{fmt}", "v1"), fmt=fmt, options=options)
    assert result.digest.startswith("sha256:") and result.reference.endswith(result.digest)

    by_tag = pull(oci_registry.ref(f"rt/{fmt}", "v1"), tmp_path / "by-tag", options=options)
    by_digest = pull(result.reference, tmp_path / "by-digest", options=options)

    assert by_tag.digest == by_digest.digest == result.digest
    assert by_tag.format == fmt
    assert snapshot(tmp_path / "by-tag") == before == snapshot(tmp_path / "by-digest")
    assert snapshot(adapter_dir) == before  # push only reads


def test_modelpack_manifest_and_config_name_the_tuning_facts(
    adapter_dir: Path, oci_registry: Registry, options: ClientOptions
) -> None:
    result = push(
        adapter_dir, oci_registry.ref("facts/a", "v1"), options=options, overrides={"method": "lora"}
    )
    info = inspect(result.reference, options=options)

    assert info["artifactType"] == mt.MODEL_ARTIFACT
    assert info["annotations"][mt.ANNOTATION_KAITO_MODEL] == "phi-3-mini-4k-instruct"
    assert info["annotations"][mt.ANNOTATION_VERSION] == "v1"
    layers = {layer["path"]: layer for layer in info["layers"]}
    assert set(layers) == set(snapshot(adapter_dir))
    assert layers["adapter_model.safetensors"]["mediaType"] == mt.MODEL_WEIGHT_RAW
    assert layers["adapter_config.json"]["mediaType"] == mt.MODEL_WEIGHT_CONFIG_RAW
    assert layers["README.md"]["mediaType"] == mt.MODEL_DOC_RAW
    # The facts ModelPack's config has no field for are manifest annotations (string values) ...
    annotations = info["annotations"]
    assert annotations["sh.kaito.tuning.basePreset"] == "phi-3-mini-4k-instruct"
    assert annotations["sh.kaito.tuning.method"] == "lora"  # the override beats metadata.json's "qlora"
    assert annotations["sh.kaito.tuning.configSha256"] == "ab" * 32
    assert annotations["sh.kaito.tuning.dataSha256"] == "cd" * 32
    assert json.loads(annotations[mt.ANNOTATION_TUNING_METRICS]) == {"train_loss": 1.25, "eval_loss": 1.5}
    assert all(isinstance(value, str) for value in annotations.values())
    assert "sh.kaito.tuning.baseModel" not in annotations  # the preset names the base
    # ... which inspect shows decoded
    assert info["tuning"] == {
        "basePreset": "phi-3-mini-4k-instruct",
        "modelRevision": "0a67737cc96d2554230f90338b163bc6380a2a85",
        "method": "lora",
        "configSha256": "ab" * 32,
        "dataSha256": "cd" * 32,
        "metrics": {"train_loss": 1.25, "eval_loss": 1.5},
    }
    # The config holds only what ModelPack's schema allows (v0.0.7: diffIds, no extension keys).
    config = info["config"]
    assert set(config) == {"descriptor", "config", "modelfs"}
    assert config["descriptor"]["family"] == "phi-3-mini-4k-instruct"
    assert config["descriptor"]["revision"] == "0a67737cc96d2554230f90338b163bc6380a2a85"
    assert config["config"] == {"format": "safetensors"}
    assert config["modelfs"] == {"type": "layers", "diffIds": [layer["digest"] for layer in info["layers"]]}


def test_a_plain_peft_adapter_names_its_base_model_from_adapter_config(
    adapter_dir: Path, oci_registry: Registry, options: ClientOptions
) -> None:
    (adapter_dir / "metadata.json").unlink()  # not from our trainer: no preset anywhere
    (adapter_dir / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": "org/base-7b", "revision": "abc123"})
    )
    for fmt in ("modelpack", "kaito"):
        result = push(adapter_dir, oci_registry.ref(f"facts/peft-{fmt}", "v1"), fmt=fmt, options=options)
        info = inspect(result.reference, options=options)

        assert info["tuning"] == {"baseModel": "org/base-7b", "modelRevision": "abc123"}
        assert info["annotations"]["sh.kaito.tuning.baseModel"] == "org/base-7b"
        assert info["annotations"][mt.ANNOTATION_DESCRIPTION] == "LoRA adapter for org/base-7b"
        assert mt.ANNOTATION_KAITO_MODEL not in info["annotations"]  # not a KAITO preset name


def test_a_preset_wins_over_adapter_config(
    adapter_dir: Path, oci_registry: Registry, options: ClientOptions
) -> None:
    (adapter_dir / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": "/mnt/models/phi-3", "revision": "r"})
    )
    result = push(adapter_dir, oci_registry.ref("facts/preset-wins", "v1"), options=options)
    tuning = inspect(result.reference, options=options)["tuning"]

    assert tuning["basePreset"] == "phi-3-mini-4k-instruct" and "baseModel" not in tuning
    assert tuning["modelRevision"] == "0a67737cc96d2554230f90338b163bc6380a2a85"


def test_kaito_layout_is_an_image_with_data_under_slash_data(
    adapter_dir: Path, oci_registry: Registry, options: ClientOptions
) -> None:
    result = push(adapter_dir, oci_registry.ref("kaito/a", "v1"), fmt="kaito", options=options)
    info = inspect(result.reference, options=options)

    assert info["format"] == "kaito"
    assert [layer["mediaType"] for layer in info["layers"]] == [mt.OCI_LAYER_TAR_GZIP]
    assert info["annotations"][mt.ANNOTATION_KAITO_MODEL] == "phi-3-mini-4k-instruct"
    assert info["tuning"]["method"] == "qlora"
    assert info["config"]["rootfs"]["type"] == "layers"
    # what the ORAS file store needs to restore data/ (oras-go content/file)
    manifest = RegistryClient(Reference.parse(result.reference), options).get_manifest(result.digest)
    layer = manifest.document["layers"][0]
    assert layer["annotations"] == {
        mt.ANNOTATION_TITLE: "data",
        mt.ANNOTATION_ORAS_UNPACK: "true",
        mt.ANNOTATION_ORAS_DIGEST: info["config"]["rootfs"]["diff_ids"][0],
    }


def test_pull_publishes_a_readable_destination(
    adapter_dir: Path, oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    ref = push(adapter_dir, oci_registry.ref("modes/a", "v1"), options=options).reference
    old = os.umask(0o022)
    try:
        pull(ref, tmp_path / "out", options=options)
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes["out"] == 0o755
    assert modes["out/checkpoint"] == 0o755
    assert modes["out/adapter_model.safetensors"] == 0o644


def test_unchanged_files_are_not_uploaded_again(
    adapter_dir: Path, oci_registry: Registry, options: ClientOptions
) -> None:
    first = push(adapter_dir, oci_registry.ref("dedupe/a", "v1"), options=options)
    (adapter_dir / "adapter_config.json").write_text('{"r": 16}')
    second = push(adapter_dir, oci_registry.ref("dedupe/a", "v2"), options=options)

    assert first.bytes_sent == first.bytes_total
    assert second.bytes_sent == len('{"r": 16}')  # only the changed file travelled
    assert second.digest != first.digest


def test_cli_push_prints_the_digest_and_pull_restores(
    adapter_dir: Path,
    oci_registry: Registry,
    docker_config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ref = oci_registry.ref("cli/a", "v1")
    digest_file = tmp_path / "digest"
    common = ["--docker-config", str(docker_config), "--chunk-size-mib", "0.1"]
    assert (
        main(["push", str(adapter_dir), ref, "--format", "kaito", "--digest-file", str(digest_file), *common])
        == 0
    )
    digest = capsys.readouterr().out.strip()
    assert digest == digest_file.read_text().strip() and digest.startswith("sha256:")

    assert main(["inspect", ref, *common]) == 0
    assert json.loads(capsys.readouterr().out)["digest"] == digest
    assert main(["pull", f"{oci_registry.host}/cli/a@{digest}", str(tmp_path / "out"), *common]) == 0
    assert snapshot(tmp_path / "out") == snapshot(adapter_dir)


def test_pull_refuses_a_non_empty_destination_unless_replace(
    adapter_dir: Path, oci_registry: Registry, options: ClientOptions, tmp_path: Path
) -> None:
    ref = oci_registry.ref("replace/a", "v1")
    push(adapter_dir, ref, options=options)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old.txt").write_text("old")

    with pytest.raises(InvalidInputError, match="not empty"):
        pull(ref, dest, options=options)
    assert (dest / "old.txt").read_text() == "old"
    pull(ref, dest, options=options, replace=True)
    assert snapshot(dest) == snapshot(adapter_dir)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".dest")) == []  # no staging left
