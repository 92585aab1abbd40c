"""Media types, artifact types and annotation keys, with the spec each one comes from.

Two formats are written; both are checked in the tests with the ORAS CLI and, for ModelPack, with the
model-spec module's own config validator (hack/build-tools.sh builds both).

``modelpack`` (default) follows the CNCF ModelPack specification (github.com/modelpack/model-spec v0.0.7,
docs/spec.md, docs/config.md and schema/config-schema.json): an OCI image manifest with ``artifactType``
``application/vnd.cncf.model.manifest.v1+json``, a config blob of media type
``application/vnd.cncf.model.config.v1+json`` and one *raw* (untarred, uncompressed) layer per file, its
relative path in the ``org.cncf.model.filepath`` annotation. Raw layers make the layer digest the file's
own sha256, so an unchanged file (a tokenizer, a README) is stored once across adapter versions, and the
config's ``modelfs.diffIds`` equal the layer digests. Each layer also carries
``org.opencontainers.image.title`` with the same path so ``oras pull`` restores the tree too.
The config holds only what the schema allows (it has ``additionalProperties: false`` at every level):
``descriptor`` (``createdAt``, ``name``; ``family`` is the base preset, ``revision`` the base model
revision), ``config.format`` and ``modelfs``.

The tuning facts no ModelPack field holds go in manifest annotations, string values, in both formats:
``sh.kaito.tuning.basePreset``, ``.baseModel`` (``base_model_name_or_path`` of a plain PEFT adapter's
``adapter_config.json`` when no preset is named), ``.modelRevision``, ``.method``, ``.configSha256``,
``.dataSha256`` and ``sh.kaito.tuning.metrics+json`` (the final metrics as a JSON object, after
ModelPack's own ``org.cncf.model.file.metadata+json`` convention). ``inspect`` shows them decoded.

``kaito`` is the layout KAITO's adapter and data images use: a plain OCI *image* (image config, one
``tar+gzip`` layer) with the files under ``/data`` and the manifest annotation ``sh.kaito.model.name``
naming the base preset. Being a real image, it also works as a Kubernetes image volume or init container.
Its layer also carries what the ORAS file store needs to restore it (oras-go ``content/file``): the
title ``data``, ``io.deis.oras.content.unpack: "true"`` and ``io.deis.oras.content.digest``, the sha256 of
the uncompressed tar (its diff_id), which oras checks against the bytes up to the tar's end-of-archive
marker, so the tar is written without trailing record padding. ``oras pull`` then writes ``data/...``.

Pulled, a third kind is recognised: ``files``, what ``oras push`` makes of files and folders. A file is
one layer of its own bytes, titled with its name (media type ``application/vnd.oci.image.layer.v1.tar``
by default, though it is no tar); a folder is a tar+gzip layer titled with the folder's name, its members
under that name, with the unpack annotation.
"""

from __future__ import annotations

# OCI image spec (image-spec/media-types.md)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_IMAGE_CONFIG = "application/vnd.docker.container.image.v1+json"
IMAGE_CONFIG_TYPES = (OCI_IMAGE_CONFIG, DOCKER_IMAGE_CONFIG)
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
# Docker image manifest v2 schema 2, still what most data images built with docker are.
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_LAYER_TAR_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MANIFEST_ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)

# CNCF ModelPack (model-spec docs/spec.md, "Media types" and "Annotations")
MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODEL_WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"
MODEL_WEIGHT_CONFIG_RAW = "application/vnd.cncf.model.weight.config.v1.raw"
MODEL_DOC_RAW = "application/vnd.cncf.model.doc.v1.raw"
ANNOTATION_FILEPATH = "org.cncf.model.filepath"

# OCI pre-defined annotations (image-spec/annotations.md)
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_VERSION = "org.opencontainers.image.version"
ANNOTATION_DESCRIPTION = "org.opencontainers.image.description"

# oras-go content/file: a tar+gzip layer the ORAS file store unpacks into a folder named by its title,
# after checking the uncompressed tar's digest when the digest annotation is there.
ANNOTATION_ORAS_UNPACK = "io.deis.oras.content.unpack"
ANNOTATION_ORAS_DIGEST = "io.deis.oras.content.digest"

# KAITO: the base model preset an adapter image belongs to.
ANNOTATION_KAITO_MODEL = "sh.kaito.model.name"
# The tuning facts, one manifest annotation each: this prefix + a TuningFacts JSON key (layout.py).
ANNOTATION_TUNING_PREFIX = "sh.kaito.tuning."
ANNOTATION_TUNING_METRICS = "sh.kaito.tuning.metrics+json"
# The held-out evaluation, base model -> adapter: status.tuning.evaluation's shape (contract.reports).
ANNOTATION_TUNING_EVALUATION = "sh.kaito.tuning.evaluation+json"
# Where earlier pushes kept the facts: a config key ModelPack's schema forbids (inspect reads it).
LEGACY_CONFIG_TUNING_KEY = "sh.kaito.tuning"

FORMATS = ("modelpack", "kaito")

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")
_DOC_SUFFIXES = (".md", ".txt", ".rst")
_DOC_NAMES = ("readme", "license", "metadata.json", "notice")


def layer_media_type(relative_path: str) -> str:
    """ModelPack layer type for a file: weights, docs, else weight config (what loading needs)."""
    name = relative_path.rsplit("/", 1)[-1].lower()
    if is_weight_file(name):
        return MODEL_WEIGHT_RAW
    if name.startswith(_DOC_NAMES) or (name.endswith(_DOC_SUFFIXES) and not name.startswith("merges")):
        return MODEL_DOC_RAW
    return MODEL_WEIGHT_CONFIG_RAW


def is_weight_file(relative_path: str) -> bool:
    """Model weights by file name (what a config-only fetch leaves out)."""
    return relative_path.lower().endswith(_WEIGHT_SUFFIXES)


def is_tar_layer(media_type: str) -> bool:
    """Container image layer types (tar, maybe gzipped). In an image these are tars (KAITO's layout: the
    files are the ``data/`` members); ``oras push`` also labels plain files with the tar type."""
    return media_type in (OCI_LAYER_TAR, OCI_LAYER_TAR_GZIP, DOCKER_LAYER_TAR_GZIP)
