"""Real clients read what we push and we read what they push: the ORAS CLI and ModelPack's validator.

The binaries come from hack/build-tools.sh (ORAS CLI v1.3.6; modelpack-validate, model-spec v0.0.7's
own config validator). Where one is not built the test is skipped with the command that builds it, but
under CI (``CI`` set) a missing tool fails: these checks are the point of the file.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from artifacts import layout
from artifacts import mediatypes as mt
from artifacts.pull import inspect, pull
from artifacts.push import push
from artifacts.registry import ClientOptions
from hack.cluster import tool_path
from tests.artifacts.conftest import snapshot
from tests.fixtures.registry import Registry
from tuning_controller.cli import main


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(name: str) -> Path:
    """The built binary NAME; skip (fail under CI) with the command that builds it when missing."""
    path = tool_path(name)
    if path is not None:
        return path
    message = (
        f"{name} is not built: run `hack/build-tools.sh` (cached under "
        "${KAITO_TUNE_CACHE:-$HOME/.cache/kaito-tune}/tools)"
    )
    if _in_ci():
        pytest.fail(f"{message}; CI is set, so a missing tool fails instead of skipping", pytrace=False)
    pytest.skip(message)


class Oras:
    """The ORAS CLI against the loopback registry, with its credentials in a docker config file."""

    def __init__(self, binary: Path, registry: Registry, docker_config: Path) -> None:
        self.binary, self.registry, self.docker_config = binary, registry, docker_config

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        command = [str(self.binary), *args, "--plain-http", "--registry-config", str(self.docker_config)]
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180)

    def __call__(self, *args: str, cwd: Path | None = None) -> str:
        """Runs ``oras ARGS``, which must succeed; returns its stdout."""
        done = self.run(*args, cwd=cwd)
        assert done.returncode == 0, f"oras {' '.join(args)}\n{done.stdout}\n{done.stderr}"
        return done.stdout


@pytest.fixture
def oras(oci_registry: Registry, docker_config: Path) -> Oras:
    return Oras(require_tool("oras"), oci_registry, docker_config)


@pytest.fixture
def validate_modelpack(tmp_path: Path):
    """Runs model-spec's validator on a config document; returns (exit status, output)."""
    binary = require_tool("modelpack-validate")

    def run(config: bytes) -> tuple[int, str]:
        path = tmp_path / "modelpack-config.json"
        path.write_bytes(config)
        done = subprocess.run([str(binary), str(path)], capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout + done.stderr

    return run


def oras_made_tree(root: Path) -> Path:
    """A folder with nesting, an empty file, an executable and bytes that do not compress."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "weights.bin").write_bytes(os.urandom(200_000))
    (root / "notes.md").write_text("# notes\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "sub" / "config.json").write_text('{"r": 8}')
    (root / "sub" / "deeper" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "sub" / "deeper" / "run.sh").chmod(0o755)
    return root


@pytest.mark.parametrize("fmt", ["modelpack", "kaito"])
def test_oras_pull_restores_our_push_byte_for_byte(
    fmt: str, adapter_dir: Path, oci_registry: Registry, options: ClientOptions, oras: Oras, tmp_path: Path
) -> None:
    ref = oci_registry.ref(f"oras/ours-{fmt}", "v1")
    result = push(adapter_dir, ref, fmt=fmt, options=options)
    out = tmp_path / "oras-out"
    out.mkdir()

    oras("pull", ref, "--output", str(out))

    # ModelPack: each layer titled with its path; KAITO: the layer unpacks into data/ (its title).
    pulled = snapshot(out) if fmt == "modelpack" else snapshot(out / "data")
    assert pulled == snapshot(adapter_dir)
    assert sorted(p.name for p in out.iterdir()) == (
        sorted(p.name for p in adapter_dir.iterdir()) if fmt == "modelpack" else ["data"]
    )
    manifest = json.loads(oras("manifest", "fetch", f"{oci_registry.host}/oras/ours-{fmt}@{result.digest}"))
    assert manifest.get("artifactType") == (mt.MODEL_ARTIFACT if fmt == "modelpack" else None)


def test_kaito_layer_digest_annotation_is_what_oras_checks(
    adapter_dir: Path, oci_registry: Registry, options: ClientOptions, oras: Oras, tmp_path: Path
) -> None:
    """oras verifies io.deis.oras.content.digest on unpack: a wrong one must fail its pull, so the
    passing pull above really checked ours (and our own pull refuses it too)."""
    ref = oci_registry.ref("oras/bad-digest", "v1")
    push(adapter_dir, ref, fmt="kaito", options=options)
    manifest = json.loads(oras("manifest", "fetch", ref))
    manifest["layers"][0]["annotations"][mt.ANNOTATION_ORAS_DIGEST] = "sha256:" + "0" * 64
    edited = tmp_path / "manifest.json"
    edited.write_bytes(layout.encode(manifest))
    oras("manifest", "push", "--media-type", mt.OCI_MANIFEST, ref, str(edited))

    done = oras.run("pull", ref, "--output", str(tmp_path / "o"))
    assert done.returncode != 0 and "digest mismatch" in done.stderr, done.stderr
    with pytest.raises(Exception, match="not the sha256:0000"):
        pull(ref, tmp_path / "ours", options=options)
    assert not (tmp_path / "ours").exists()


def test_we_pull_a_folder_oras_pushed(
    oci_registry: Registry,
    oras: Oras,
    docker_config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "work"
    tree = oras_made_tree(work / "bundle")
    ref = oci_registry.ref("oras/folder", "v1")
    oras("push", ref, "bundle/", cwd=work)
    layers = json.loads(oras("manifest", "fetch", ref))["layers"]
    assert [x["annotations"][mt.ANNOTATION_ORAS_UNPACK] for x in layers] == ["true"]

    dest = tmp_path / "dest"
    assert main(["pull", ref, str(dest), "--docker-config", str(docker_config)]) == 0

    assert "(files, 5 files)" in capsys.readouterr().out
    assert sorted(p.name for p in dest.iterdir()) == ["bundle"]
    assert snapshot(dest / "bundle") == snapshot(tree)
    assert os.access(dest / "bundle" / "sub" / "deeper" / "run.sh", os.X_OK)
    assert not os.access(dest / "bundle" / "notes.md", os.X_OK)


def test_we_pull_files_oras_pushed_with_its_default_layer_type(
    oci_registry: Registry, oras: Oras, options: ClientOptions, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    tree = oras_made_tree(work)
    names = ["weights.bin", "notes.md", "empty.txt", "sub/config.json"]
    ref = oci_registry.ref("oras/files", "v1")
    oras("push", ref, *names, cwd=work)

    info = inspect(ref, options=options)
    assert {x["mediaType"] for x in info["layers"]} == {mt.OCI_LAYER_TAR}  # no tars, whatever the type says
    assert info["format"] == "files"
    result = pull(ref, tmp_path / "dest", options=options)

    assert result.format == "files" and result.files == len(names)
    assert snapshot(tmp_path / "dest") == {name: (tree / name).read_bytes() for name in names}


def test_a_folder_and_files_in_one_oras_push(
    oci_registry: Registry, oras: Oras, options: ClientOptions, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    tree = oras_made_tree(work / "bundle")
    (work / "README.md").write_text("top\n")
    ref = oci_registry.ref("oras/mixed", "v1")
    oras("push", ref, "bundle", "README.md:text/markdown", cwd=work)

    pull(ref, tmp_path / "dest", options=options)

    expected = {f"bundle/{k}": v for k, v in snapshot(tree).items()} | {"README.md": b"top\n"}
    assert snapshot(tmp_path / "dest") == expected


def test_our_modelpack_config_passes_the_model_spec_validator(
    adapter_dir: Path, oci_registry: Registry, options: ClientOptions, oras: Oras, validate_modelpack
) -> None:
    ref = oci_registry.ref("oras/validated", "v1")
    push(adapter_dir, ref, options=options)
    config = oras("manifest", "fetch-config", ref).encode()

    status, output = validate_modelpack(config)
    assert status == 0, output

    # The validator is not vacuous: the layout pushed before (diff_ids, an extension key) fails it.
    old = json.loads(config)
    old["modelfs"]["diff_ids"] = old["modelfs"].pop("diffIds")
    status, output = validate_modelpack(layout.encode(old))
    assert status == 1 and "diffIds" in output, output
    extra = json.loads(config) | {mt.LEGACY_CONFIG_TUNING_KEY: {"basePreset": "x"}}
    status, output = validate_modelpack(layout.encode(extra))
    assert status == 1 and "additionalProperties" in output, output


def test_a_plain_peft_adapter_config_passes_the_validator_too(
    adapter_dir: Path, oci_registry: Registry, options: ClientOptions, oras: Oras, validate_modelpack
) -> None:
    (adapter_dir / "metadata.json").unlink()
    ref = oci_registry.ref("oras/validated-plain", "v1")
    push(adapter_dir, ref, options=options)
    status, output = validate_modelpack(oras("manifest", "fetch-config", ref).encode())
    assert status == 0, output


def test_a_peft_adapter_round_trips_through_oras_and_loads(
    oci_registry: Registry, options: ClientOptions, oras: Oras, tmp_path: Path
) -> None:
    """Our push -> oras pull -> PEFT loads it; oras push of that folder -> our pull -> PEFT loads it.
    Both give the adapted model's logits exactly, which differ from the base model's."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from presets.tiny import ensure_tiny_preset

    preset = ensure_tiny_preset()
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_pretrained(preset, dtype=torch.float32)
    tokens = transformers.AutoTokenizer.from_pretrained(preset)("the code word is", return_tensors="pt")
    with torch.no_grad():
        base_logits = base(**tokens).logits
    # init_lora_weights=False: random B, so the adapter changes the output without training
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = peft.get_peft_model(base, lora)
    adapter = tmp_path / "adapter"
    adapted.save_pretrained(adapter)
    with torch.no_grad():
        adapted_logits = adapted(**tokens).logits
    assert not torch.allclose(adapted_logits, base_logits)

    def load_logits(directory: Path):
        fresh = transformers.AutoModelForCausalLM.from_pretrained(preset, dtype=torch.float32)
        with torch.no_grad():
            return peft.PeftModel.from_pretrained(fresh, directory).eval()(**tokens).logits

    ref = oci_registry.ref("oras/peft", "v1")
    result = push(adapter, ref, options=options)
    assert inspect(result.reference, options=options)["tuning"]["baseModel"] == str(preset)
    by_oras = tmp_path / "by-oras"
    by_oras.mkdir()
    oras("pull", ref, "--output", str(by_oras))
    assert snapshot(by_oras) == snapshot(adapter)
    assert torch.equal(load_logits(by_oras), adapted_logits)

    back = oci_registry.ref("oras/peft-back", "v1")
    oras("push", back, *sorted(snapshot(by_oras)), cwd=by_oras)
    by_us = tmp_path / "by-us"
    pull(back, by_us, options=options)
    assert snapshot(by_us) == snapshot(adapter)
    assert torch.equal(load_logits(by_us), adapted_logits)
