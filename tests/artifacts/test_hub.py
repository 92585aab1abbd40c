"""artifacts.hub against a hub-compatible server on loopback: a narrow contract test.

The real Hugging Face hub cannot be reached from here, so olah (a self-hosted hub mirror, run offline on
local git repositories, see tests/fixtures/hub.py) stands in for it, with a small token gate in front for
the gated repository.

Covered: the real ``huggingface_hub`` client (the version in .venv) talking HTTP to a real server that
implements the hub's API for repo info at a revision, the recursive tree and file resolve (HEAD, then
GET); revisions resolved by git (branch -> commit, a commit stays pinned); the hub's error headers for a
missing repository or revision (olah's) and for gated access (the gate's, written after the hub's: the
repo info is public, files answer 401/403 with ``X-Error-Code: GatedRepo``, an unknown token gets 401
"Invalid credentials"), and how artifacts.hub maps them to artifact errors; HF_HUB_OFFLINE=1 in the
environment.

Not covered: files stored with LFS or Xet (the tiny preset is plain git blobs; the real hub serves
weights through Xet or a CDN redirect), the hub's rate limits, and the real hub's exact answers, which
may drift from these.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from artifacts.errors import AuthError, InvalidInputError, NotFoundError
from artifacts.hub import SECRET_HINT, check_hub_access, fetch_hub_snapshot
from hack.cluster import REPO_ROOT
from tests.artifacts.conftest import snapshot
from tests.fixtures.hub import HubServer


def fetch(hub: HubServer, dest: Path, repo: str = "", revision: str = "", token: str | None = None):
    return fetch_hub_snapshot(
        repo or hub.public_repo, revision or hub.revision, dest, token=token, endpoint=hub.endpoint
    )


def test_pinned_revision_is_byte_identical(hub_server: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    result = fetch(hub_server, dest)
    expected = snapshot(hub_server.source)
    assert snapshot(dest) == expected  # and nothing else: no .cache/huggingface left behind
    assert result.commit == hub_server.revision
    assert (result.files, result.bytes_total) == (len(expected), sum(map(len, expected.values())))
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the staging directory is gone
    with pytest.raises(InvalidInputError, match="not an empty directory"):
        fetch(hub_server, dest)


def test_pinning_the_first_commit_ignores_a_later_one(hub_server: HubServer, tmp_path: Path) -> None:
    latest = fetch(hub_server, tmp_path / "latest", revision="main")
    assert latest.commit == hub_server.next_revision
    assert (tmp_path / "latest/NOTES.md").exists()
    assert "kaito_tune_note" in json.loads((tmp_path / "latest/config.json").read_text())

    pinned = fetch(hub_server, tmp_path / "pinned", revision=hub_server.revision)
    assert pinned.commit == hub_server.revision != latest.commit
    assert snapshot(tmp_path / "pinned") == snapshot(hub_server.source)


def test_gated_repo_without_token_is_an_auth_error(hub_server: HubServer, tmp_path: Path) -> None:
    with pytest.raises(AuthError) as caught:
        fetch(hub_server, tmp_path / "model", repo=hub_server.gated_repo)
    message = str(caught.value)
    assert f"{hub_server.gated_repo}@{hub_server.revision}" in message
    assert "no token was sent" in message and SECRET_HINT in message and "\n" not in message
    assert not (tmp_path / "model").exists() and not list(tmp_path.iterdir())


def test_gated_repo_with_the_right_token(hub_server: HubServer, tmp_path: Path) -> None:
    result = fetch(hub_server, tmp_path / "model", repo=hub_server.gated_repo, token=hub_server.token)
    assert result.commit == hub_server.revision
    assert snapshot(tmp_path / "model") == snapshot(hub_server.source)


@pytest.mark.parametrize("which", ["wrong", "ungranted"])
def test_gated_repo_with_a_bad_token_is_an_auth_error(
    hub_server: HubServer, tmp_path: Path, which: str
) -> None:
    token = "hf_notAToken" if which == "wrong" else hub_server.ungranted_token
    with pytest.raises(AuthError) as caught:
        fetch(hub_server, tmp_path / "model", repo=hub_server.gated_repo, token=token)
    message = str(caught.value)
    assert f"{hub_server.gated_repo}@{hub_server.revision}" in message
    assert ("with a token" if which == "wrong" else "refused the token sent") in message
    assert SECRET_HINT in message and token not in message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("repo", "revision"),
    [("kaito-tune/absent", "pinned"), ("kaito-tune/absent", "main"), ("", "no-such-branch")],
)
def test_missing_repo_or_revision_is_not_found(
    hub_server: HubServer, tmp_path: Path, repo: str, revision: str
) -> None:
    # olah offline answers a missing repository at a commit with 404 EntryNotFound, at a branch with 401
    # RepoNotFound, and an unknown branch of a local repository as a missing repository. (An unknown full
    # commit sha of a local repository gets HTTP 500 from olah 0.5.4; that is not tested here.)
    repo = repo or hub_server.public_repo
    revision = hub_server.revision if revision == "pinned" else revision
    with pytest.raises(NotFoundError) as caught:
        fetch(hub_server, tmp_path / "model", repo=repo, revision=revision)
    message = str(caught.value)
    assert f"{repo}@{revision} on {hub_server.endpoint}: not found (request without a token)" in message
    assert SECRET_HINT in message
    assert not list(tmp_path.iterdir())


def test_check_hub_access_resolves_without_downloading(hub_server: HubServer) -> None:
    before = len(hub_server.requests)
    endpoint = hub_server.endpoint
    assert check_hub_access(hub_server.public_repo, "main", token=None, endpoint=endpoint) == (
        hub_server.next_revision
    )
    gated = check_hub_access(
        hub_server.gated_repo, hub_server.revision, token=hub_server.token, endpoint=endpoint
    )
    assert gated == hub_server.revision
    with pytest.raises(AuthError):
        check_hub_access(hub_server.gated_repo, "main", token=None, endpoint=endpoint)
    seen = hub_server.requests[before:]
    assert [method for method, path in seen if "/resolve/" in path] == ["HEAD", "HEAD", "HEAD"]
    assert all(
        path.startswith("/api/models/") and "/revision/" in path
        for _, path in seen
        if "/resolve/" not in path
    )


def test_works_when_the_environment_sets_hf_hub_offline(hub_server: HubServer, tmp_path: Path) -> None:
    """The runtime image sets HF_HUB_OFFLINE=1; huggingface_hub reads it at import, in a fresh process."""
    code = (
        "import sys; from pathlib import Path; import huggingface_hub.constants as c\n"
        "from artifacts.hub import fetch_hub_snapshot\n"
        "assert c.HF_HUB_OFFLINE\n"
        "a = sys.argv\n"
        "r = fetch_hub_snapshot(a[1], a[2], Path(a[3]), token=None, endpoint=a[4])\n"
        "assert c.HF_HUB_OFFLINE, 'restored after the call'\n"
        "print(r.commit)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            hub_server.public_repo,
            "main",
            str(tmp_path / "model"),
            hub_server.endpoint,
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == hub_server.next_revision
    assert (tmp_path / "model/NOTES.md").exists() and not (tmp_path / "hf-home").exists()


def kaito_tune(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuning_controller.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )


def test_fetch_model_and_model_push_take_a_gated_repo_with_the_token_file(
    hub_server: HubServer, open_registry, tmp_path: Path
) -> None:
    """What a pod's fetch-model does with a modelAccessSecret (the token as a file, the runtime image's
    HF_HUB_OFFLINE=1 set), and mirroring the same gated model into a registry with `model push`."""
    token = tmp_path / "token"
    token.write_text(hub_server.token + "\n")
    pinned = f"{hub_server.gated_repo}@{hub_server.revision}"
    common = ["--hub-endpoint", hub_server.endpoint, "--cache", str(tmp_path / "cache")]
    summaries = []
    for pod in ("one", "two"):
        summary = tmp_path / f"{pod}.json"
        dest = tmp_path / pod / "weights"
        run = kaito_tune(
            "fetch-model", "--hub", pinned, "--token-file", str(token), "--dest", str(dest),
            "--summary-file", str(summary), *common, env={"HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert snapshot(dest) == snapshot(hub_server.source)
        summaries.append(json.loads(summary.read_text()))
    assert summaries[0]["source"] == "hub" and summaries[0]["reference"] == pinned
    assert (summaries[0]["cached"], summaries[1]["cached"], summaries[1]["bytesFetched"]) == (False, True, 0)
    refused = kaito_tune("fetch-model", "--hub", pinned, "--dest", str(tmp_path / "x"), *common[:2])
    assert refused.returncode == 1 and "modelAccessSecret" in refused.stderr
    mirror = f"{open_registry.host}/models/tiny-gated:{hub_server.revision}"
    push = kaito_tune(
        "model", "push", pinned, mirror, "--token-file", str(token), "--hub-endpoint", hub_server.endpoint
    )
    assert push.returncode == 0, push.stderr
    pulled = kaito_tune("model", "pull", mirror, str(tmp_path / "mirrored"))
    assert pulled.returncode == 0, pulled.stderr
    assert snapshot(tmp_path / "mirrored") == snapshot(hub_server.source)
