"""Media types, artifact types and annotation keys, with the spec each one comes from.

Two formats are written:

``modelpack`` (default) follows the CNCF ModelPack specification (github.com/modelpack/model-spec,
docs/spec.md and docs/config.md): an OCI image manifest with ``artifactType``
``application/vnd.cncf.model.manifest.v1+json``, a config blob of media type
``application/vnd.cncf.model.config.v1+json`` and one *raw* (untarred, uncompressed) layer per file, its
relative path in the ``org.cncf.model.filepath`` annotation. Raw layers make the layer digest the file's
own sha256, so an unchanged file (a tokenizer, a README) is stored once across adapter versions, and the
config's ``modelfs.diff_ids`` equal the layer digests. Each layer also carries
``org.opencontainers.image.title`` with the same path so ``oras pull`` restores the tree too.
The tuning facts ModelPack has no field for (base preset, method, config hash, data hash, final metrics)
go in the config under the extension key ``sh.kaito.tuning``; ModelPack's ``descriptor.family`` holds the
base preset and ``descriptor.revision`` the base model revision.

``kaito`` is the layout KAITO's adapter and data images use: a plain OCI *image* (image config, one
``tar+gzip`` layer) with the files under ``/data`` and the manifest annotation ``sh.kaito.model.name``
naming the base preset. Being a real image, it also works as a Kubernetes image volume or init container.
"""

from __future__ import annotations

# OCI image spec (image-spec/media-types.md)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
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

# KAITO: the base model preset an adapter image belongs to.
ANNOTATION_KAITO_MODEL = "sh.kaito.model.name"
CONFIG_TUNING_KEY = "sh.kaito.tuning"

FORMATS = ("modelpack", "kaito")

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")
_DOC_SUFFIXES = (".md", ".txt", ".rst")
_DOC_NAMES = ("readme", "license", "metadata.json", "notice")


def layer_media_type(relative_path: str) -> str:
    """ModelPack layer type for a file: weights, docs, else weight config (what loading needs)."""
    name = relative_path.rsplit("/", 1)[-1].lower()
    if name.endswith(_WEIGHT_SUFFIXES):
        return MODEL_WEIGHT_RAW
    if name.startswith(_DOC_NAMES) or (name.endswith(_DOC_SUFFIXES) and not name.startswith("merges")):
        return MODEL_DOC_RAW
    return MODEL_WEIGHT_CONFIG_RAW


def is_tar_layer(media_type: str) -> bool:
    """Container image layers (tar, maybe gzipped): KAITO's layout, the files are the ``data/`` members."""
    return media_type in (OCI_LAYER_TAR, OCI_LAYER_TAR_GZIP, DOCKER_LAYER_TAR_GZIP)
