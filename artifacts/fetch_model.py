"""``fetch-model``: a preset's weights into the pod, pinned, verified and (with a cache) fetched once.

The source is an OCI model artifact (ModelPack or KAITO layout, or any oras-style artifact) or a hub
repository at a revision. Either is first pinned (the manifest digest, the commit), so the cache key
names content and the pre-flight's check and the training use the same bytes. ``config_only`` fetches
what the CPU pre-flight needs (config, tokenizer) and proves the reference and the credentials work,
without the weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts import mediatypes as mt
from artifacts.errors import ArtifactError, InvalidInputError
from artifacts.modelcache import ModelCache, hub_key, oci_key
from artifacts.pull import pull, resolve
from artifacts.reference import Reference
from artifacts.registry import ClientOptions, RegistryClient

# What a model loader reads besides the weights: configs, tokenizers, chat templates.
CONFIG_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py"]


@dataclass(frozen=True)
class ModelFetch:
    source: str  # "oci" or "hub"
    reference: str  # pinned: registry/repository@sha256:... or repo_id@commit
    digest: str  # the manifest digest or the commit
    path: Path  # where the files are (a cache entry, or the destination itself)
    bytes_fetched: int  # 0 when the cache had it
    cached: bool

    def summary(self) -> dict[str, Any]:
        """The pod's termination message: what the controller copies into the Workspace status."""
        return {
            "source": self.source,
            "reference": self.reference,
            "digest": self.digest,
            "bytesFetched": self.bytes_fetched,
            "cached": self.cached,
        }


def _skip_weights(layer: dict[str, Any], path: str) -> bool:
    return layer.get("mediaType") == mt.MODEL_WEIGHT_RAW or mt.is_weight_file(path)


def _link(dest: Path, target: Path) -> None:
    """``dest`` -> ``target``: the containers that read the weights mount the cache at the same path."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink():
        dest.unlink()
    elif dest.exists():
        raise InvalidInputError(f"{dest} exists and is not a link; fetch-model links it to the cache")
    os.symlink(target, dest)


def fetch_model(
    *,
    image: str = "",
    hub: str = "",
    dest: Path,
    cache: ModelCache | None = None,
    options: ClientOptions | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    config_only: bool = False,
    max_cache_bytes: int = 0,
    progress: Callable[[int], None] | None = None,
) -> ModelFetch:
    """Fetch ``image`` or ``hub`` (``repo_id@revision``) into ``dest`` (via ``cache`` when given)."""
    if bool(image) == bool(hub):
        raise InvalidInputError("fetch-model takes exactly one of --image and --hub")
    options = options or ClientOptions()
    fetched = [0]
    fill: Callable[[Path], None]
    if image:
        ref = Reference.parse(image)
        digest = resolve(RegistryClient(ref, options), ref).digest
        pinned = f"{ref.registry}/{ref.repository}@{digest}"
        source, key = "oci", oci_key(digest)

        def fill(target: Path) -> None:
            skip = _skip_weights if config_only else None
            fetched[0] = pull(pinned, target, options=options, skip=skip, progress=progress).bytes_total

    else:
        from artifacts.hub import check_hub_access, fetch_hub_snapshot  # huggingface_hub: 0.3 s to import

        repo_id, _, revision = hub.partition("@")
        if not repo_id or not revision:
            raise InvalidInputError(f"--hub {hub!r} must be REPO_ID@REVISION, e.g. org/model@<commit>")
        digest = check_hub_access(repo_id, revision, token=token, endpoint=endpoint)
        pinned = f"{repo_id}@{digest}"
        source, key = "hub", hub_key(repo_id, digest)

        def fill(target: Path) -> None:
            patterns = CONFIG_PATTERNS if config_only else None
            result = fetch_hub_snapshot(
                repo_id, digest, target, token=token, endpoint=endpoint, allow_patterns=patterns
            )
            fetched[0] = result.bytes_total

    try:
        if cache is None or config_only:
            fill(dest)
            return ModelFetch(source, pinned, digest, dest, fetched[0], cached=False)
        path, cached = cache.get_or_fill(key, fill)
    except ArtifactError as exc:  # say which model: a blob digest alone does not tell a person
        raise type(exc)(f"model {pinned}: {exc}") from exc
    _link(dest, path)
    if max_cache_bytes:
        cache.evict(max_cache_bytes, keep=key)
    return ModelFetch(source, pinned, digest, path, fetched[0], cached)
