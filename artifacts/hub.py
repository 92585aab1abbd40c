"""Model weights from a Hugging Face hub at a pinned revision, with the errors a Workspace status can show.

``fetch_hub_snapshot`` asks the hub which commit the revision is, then downloads exactly that commit with
``huggingface_hub.snapshot_download`` into a staging directory beside ``dest``, which is renamed into
place only when every file arrived (``artifacts.pull``'s ``stage``/``publish``); on any error the
destination is untouched. ``check_hub_access`` is the CPU pre-flight: the repo info at the revision (its
commit) and one file's metadata (the hub gates files, not repo info), no file content.

Decisions, and why:

- The token is the Workspace's ``modelAccessSecret`` and nothing else: ``token=None`` sends no token
  (``token=False`` to huggingface_hub), never one found in ``~/.cache/huggingface`` or ``HF_TOKEN``, so
  each error can say truthfully whether a token was sent. No message ever contains the token.
- ``HF_HUB_OFFLINE``: huggingface_hub 2.4 reads it once, at import, into
  ``huggingface_hub.constants.HF_HUB_OFFLINE``; ``constants.is_offline_mode()`` returns that attribute on
  every request and the HTTP client then refuses to connect. The runtime image sets it so that training
  and serving never reach the hub. A call here is the one deliberate hub access, with an explicit
  endpoint, so it clears that attribute for the duration of its own calls (:func:`_online`, counted, so
  concurrent calls restore it once) and puts the previous value back. The fetch-model process therefore
  works with or without ``HF_HUB_OFFLINE=1`` in its environment; other code in the process (transformers)
  stays offline outside these calls.
- Nothing is written outside the staging directory: huggingface_hub's cache and metadata go to its
  ``.cache/huggingface`` inside the staging directory, which is removed before publishing.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from artifacts.errors import (
    ArtifactError,
    AuthError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
)
from artifacts.pull import publish, stage

SECRET_HINT = "set presetOptions.modelAccessSecret to a Secret with key HF_TOKEN"
_HF_CACHE = Path(".cache") / "huggingface"  # where snapshot_download keeps metadata inside local_dir


@dataclass(frozen=True)
class HubResult:
    repo_id: str
    revision: str  # as asked (a branch, tag or commit)
    commit: str  # the commit sha the files come from
    files: int
    bytes_total: int


_offline_lock = threading.Lock()
_online_users = 0
_saved_offline = False


@contextlib.contextmanager
def _online() -> Iterator[None]:
    """Let huggingface_hub make requests while inside, even if HF_HUB_OFFLINE=1 was set at its import."""
    global _online_users, _saved_offline
    with _offline_lock:
        if _online_users == 0:
            _saved_offline = constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = False
        _online_users += 1
    try:
        yield
    finally:
        with _offline_lock:
            _online_users -= 1
            if _online_users == 0:
                constants.HF_HUB_OFFLINE = _saved_offline


def _one_line(text: object, token: str | None) -> str:
    line = " ".join(str(text).split())
    return line.replace(token, "<token>") if token else line


@contextlib.contextmanager
def _mapped_errors(repo_id: str, revision: str, token: str | None, endpoint: str | None) -> Iterator[None]:
    """Turn huggingface_hub and transport errors into one-line :mod:`artifacts.errors`."""
    where = f"hub model {repo_id}@{revision} on {endpoint or constants.ENDPOINT}"
    sent = "with a token" if token else "without a token"
    try:
        with _online():
            yield
    except ArtifactError:
        raise
    except GatedRepoError as exc:  # before RepositoryNotFoundError: it is a subclass
        status = exc.response.status_code
        if token:
            raise AuthError(
                f"{where} is gated and refused the token sent (HTTP {status}): its account has no access; "
                f"accept the model's terms with that account, or {SECRET_HINT} of an account that has"
            ) from None
        raise AuthError(f"{where} is gated and no token was sent (HTTP {status}); {SECRET_HINT}") from None
    except RevisionNotFoundError:
        raise NotFoundError(
            f"{where}: the repository has no revision {revision!r} (request {sent}); pin a commit that exists"
        ) from None
    except (RepositoryNotFoundError, RemoteEntryNotFoundError) as exc:
        hint = " and that the token's account can read it" if token else f"; if it is private, {SECRET_HINT}"
        url = str(exc.response.url)
        what = f"a file it lists is missing ({urlsplit(url).path})" if "/resolve/" in url else "not found"
        raise NotFoundError(
            f"{where}: {what} (request {sent}); check the repo id and revision{hint}"
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code
        detail = _one_line(exc.server_message or exc.response.reason_phrase or "", token)
        if status in (401, 403):
            raise AuthError(
                f"{where}: the hub refused the request {sent} (HTTP {status}: {detail}); {SECRET_HINT}"
            ) from None
        if status == 429 or status >= 500:
            raise RegistryUnavailableError(
                f"{where}: the hub answered HTTP {status} {detail}; try again later"
            ) from None
        raise RegistryError(f"{where}: the hub answered HTTP {status} {detail} (request {sent})") from None
    except (httpx2.TransportError, LocalEntryNotFoundError) as exc:
        raise RegistryUnavailableError(f"{where}: cannot reach the hub: {_one_line(exc, token)}") from None


def _api(token: str | None, endpoint: str | None) -> HfApi:
    return HfApi(endpoint=endpoint, token=token or False)


def check_hub_access(repo_id: str, revision: str, *, token: str | None, endpoint: str | None) -> str:
    """The commit sha ``revision`` names, proving repo, revision and token work; downloads no content.

    The hub shows a gated repository's info to anyone and refuses only its files, so besides the repo
    info this asks for one file's metadata (a HEAD of ``config.json``, else the first file).
    """
    with _mapped_errors(repo_id, revision, token, endpoint):
        api = _api(token, endpoint)
        info = api.model_info(repo_id, revision=revision)
        if not info.sha:
            raise RegistryError(f"hub model {repo_id}@{revision}: the repo info carries no commit sha")
        names = [sibling.rfilename for sibling in info.siblings or []]
        if names:
            probe = "config.json" if "config.json" in names else names[0]
            api.get_hf_file_metadata(url=hf_hub_url(repo_id, probe, revision=info.sha, endpoint=endpoint))
    return info.sha


def fetch_hub_snapshot(
    repo_id: str,
    revision: str,
    dest: Path,
    *,
    token: str | None,
    endpoint: str | None,
    allow_patterns: list[str] | None = None,
) -> HubResult:
    """Download ``repo_id`` at ``revision`` (resolved to one commit first) into ``dest``, all or nothing."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInputError(f"destination {dest} exists and is not an empty directory")
    commit = check_hub_access(repo_id, revision, token=token, endpoint=endpoint)
    staging, inside = stage(dest)
    try:
        with _mapped_errors(repo_id, revision, token, endpoint):
            snapshot_download(
                repo_id,
                repo_type="model",
                revision=commit,  # the commit just resolved: a branch that moves meanwhile cannot mix files
                local_dir=staging,
                cache_dir=staging / _HF_CACHE / "hub",
                endpoint=endpoint,
                token=token or False,
                allow_patterns=allow_patterns,
            )
        shutil.rmtree(staging / _HF_CACHE, ignore_errors=True)
        with contextlib.suppress(OSError):
            (staging / _HF_CACHE.parent).rmdir()  # only if the repo has no .cache of its own
        files = [p for p in staging.rglob("*") if p.is_file()]
        if not files:
            wanted = f" matching {allow_patterns}" if allow_patterns else ""
            raise NotFoundError(f"hub model {repo_id}@{revision} (commit {commit}) has no files{wanted}")
        total = sum(p.stat().st_size for p in files)
        publish(staging, dest, inside, replace=False)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return HubResult(repo_id, revision, commit, len(files), total)
