"""``kaito-tune push | pull | inspect | fetch-data | fetch-model | model``: the artifact commands.

Each command prints its result on stdout (push: the manifest digest; inspect: JSON) and, on failure,
one line ``error: <reason>`` on stderr and exit status 1. ``--termination-log PATH`` also writes that
line to PATH (a pod's ``/dev/termination-log``) so the controller can copy it into the Workspace status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from artifacts import mediatypes
from artifacts.errors import ArtifactError, InvalidInputError, NotBetterError
from artifacts.fetch import FetchOptions, fetch_urls
from artifacts.fetch_model import fetch_model
from artifacts.hosts import parse_network
from artifacts.modelcache import ModelCache
from artifacts.models import push_model
from artifacts.pull import inspect, pull
from artifacts.push import push
from artifacts.registry import GIB, MIB, ClientOptions
from contract.pod import EXIT_NOT_BETTER, urls_sha256


def _default_docker_config() -> str | None:
    """Docker's convention: ``$DOCKER_CONFIG/config.json`` when that variable is set."""
    directory = os.environ.get("DOCKER_CONFIG")
    path = Path(directory, "config.json") if directory else None
    return str(path) if path and path.is_file() else None


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("registry access")
    group.add_argument(
        "--docker-config",
        default=_default_docker_config(),
        metavar="FILE",
        help="dockerconfigjson with the registry credentials (the mounted .dockerconfigjson of an "
        "imagePushSecret/imagePullSecret); default $DOCKER_CONFIG/config.json",
    )
    group.add_argument(
        "--ca-bundle",
        default=os.environ.get("KAITO_TUNE_CA_BUNDLE"),
        metavar="PEM",
        help="CA certificates for a registry with a private CA (env KAITO_TUNE_CA_BUNDLE)",
    )
    group.add_argument(
        "--plain-http",
        action="store_true",
        help="use plain http: a registry without TLS, like docker's insecure-registries (a loopback "
        "registry without TLS gets it anyway)",
    )
    group.add_argument(
        "--retries", type=int, default=5, help="retries on 5xx and connection errors (default 5)"
    )
    group.add_argument(
        "--chunk-size-mib", type=float, default=64, help="upload chunk size; a failure re-sends at most one"
    )
    group.add_argument("--max-size-gib", type=float, default=20, help="pull size cap (default 20 GiB)")
    parser.add_argument(
        "--termination-log", metavar="PATH", help="also write a failure's one-line reason here"
    )


def _client_options(args: argparse.Namespace) -> ClientOptions:
    if args.retries < 0 or args.chunk_size_mib <= 0 or args.max_size_gib <= 0:
        raise InvalidInputError("--retries must be >= 0, --chunk-size-mib and --max-size-gib > 0")
    return ClientOptions(
        docker_config=Path(args.docker_config) if args.docker_config else None,
        plain_http=args.plain_http,
        ca_bundle=args.ca_bundle,
        retries=args.retries,
        chunk_bytes=max(1, int(args.chunk_size_mib * MIB)),
        max_bytes=int(args.max_size_gib * GIB),
    )


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turns an error into one line on stderr (and the termination log) and exit status 1, or
    EXIT_NOT_BETTER for an adapter the gate refused (the training Job's failure policy fails at once)."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (ArtifactError, OSError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            if isinstance(exc, OSError) and not isinstance(exc, ArtifactError):
                reason = f"{type(exc).__name__}: {reason}"
            print(f"error: {reason}", file=sys.stderr)
            if args.termination_log:
                try:
                    Path(args.termination_log).write_text(reason + "\n")
                except OSError as log_error:
                    print(f"error: cannot write {args.termination_log}: {log_error}", file=sys.stderr)
            return EXIT_NOT_BETTER if isinstance(exc, NotBetterError) else 1

    return wrapper


def _network(text: str) -> str:
    try:
        return parse_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _annotations(pairs: list[str]) -> dict[str, str]:
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise InvalidInputError(f"--annotation {bad[0]!r} must be KEY=VALUE")
    return dict(p.split("=", 1) for p in pairs)


def _push(args: argparse.Namespace) -> int:
    overrides = {
        "preset": args.preset,
        "model_revision": args.model_revision,
        "method": args.method,
        "config_sha256": args.config_sha256,
        "data_sha256": args.data_sha256,
    }
    result = push(
        Path(args.directory),
        args.reference,
        fmt=args.format,
        options=_client_options(args),
        overrides=overrides,
        annotations=_annotations(args.annotation),
        ignore_gate=args.ignore_gate,
    )
    if args.digest_file:
        Path(args.digest_file).write_text(result.digest + "\n")
    print(result.digest)
    print(
        f"pushed {result.reference} ({result.bytes_sent} of {result.bytes_total} bytes sent)", file=sys.stderr
    )
    return 0


def _pull(args: argparse.Namespace) -> int:
    result = pull(args.reference, Path(args.directory), options=_client_options(args), replace=args.replace)
    print(f"pulled {result.reference} ({result.format}, {result.files} files) into {args.directory}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    print(json.dumps(inspect(args.reference, options=_client_options(args)), indent=2))
    return 0


def _listed_urls(path: str, expect_sha256: str | None) -> list[str]:
    """The URLs of a --urls-file (one per line), checked against the digest its writer rendered: the
    controller creates the Secret behind it without reading it, so a namesake made by someone else
    must not redirect the download."""
    urls = Path(path).read_text().splitlines()
    found = urls_sha256(urls)
    if expect_sha256 is not None and found != expect_sha256:
        raise InvalidInputError(
            f"{path} does not hold this Workspace's input URLs (sha256 {found}, expected {expect_sha256}): "
            "the Secret mounted there was not made by the controller; delete it and the controller makes it "
            "again"
        )
    return urls


def _fetch_data(args: argparse.Namespace) -> int:
    if sum(map(bool, (args.urls, args.urls_file, args.image))) != 1:
        raise InvalidInputError("fetch-data takes exactly one of --urls, --urls-file and --image")
    dest = Path(args.dest)
    if args.image:
        result = pull(args.image, dest, options=_client_options(args))
        print(f"extracted {result.files} files of {result.reference} into {dest}")
        return 0
    options = FetchOptions(
        max_bytes=int(args.max_size_gib * GIB),
        retries=args.retries,
        allowed_networks=tuple(args.allow_network),
        ca_bundle=args.ca_bundle,
    )
    urls = _listed_urls(args.urls_file, args.expect_urls_sha256) if args.urls_file else args.urls
    written = fetch_urls(urls, dest, options)
    print(f"downloaded {len(written)} files into {dest}")
    return 0


def _read_token(path: str | None) -> str | None:
    if not path:
        return None
    token = Path(path).read_text().strip()
    if not token:
        raise InvalidInputError(f"--token-file {path} is empty; the Secret needs a non-empty HF_TOKEN")
    return token


def _fetch_model(args: argparse.Namespace) -> int:
    result = fetch_model(
        image=args.image or "",
        hub=args.hub or "",
        dest=Path(args.dest),
        cache=ModelCache(Path(args.cache)) if args.cache else None,
        options=_client_options(args),
        token=_read_token(args.token_file),
        endpoint=args.hub_endpoint or None,
        config_only=args.config_only,
        max_cache_bytes=int(args.cache_max_gib * GIB),
    )
    summary = json.dumps(result.summary(), separators=(",", ":"))
    if args.summary_file:
        Path(args.summary_file).write_text(summary + "\n")
    how = "from the cache" if result.cached else f"{result.bytes_fetched} bytes fetched"
    print(f"model {result.reference} ready at {args.dest} ({how})")
    return 0


def _model_push(args: argparse.Namespace) -> int:
    result = push_model(
        args.source,
        args.reference,
        fmt=args.format,
        options=_client_options(args),
        token=_read_token(args.token_file),
        endpoint=args.hub_endpoint or None,
        preset=args.preset,
    )
    print(result.digest)
    print(
        f"pushed {result.reference} ({result.bytes_sent} of {result.bytes_total} bytes sent)", file=sys.stderr
    )
    return 0


def _register_model(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser(
        "model", help="package a base model as an OCI model artifact (mirror a preset) or pull one"
    )
    commands = model.add_subparsers(dest="model_command", required=True)
    parser = commands.add_parser(
        "push",
        help="push a model directory or a hub snapshot (REPO_ID@REVISION) as a model artifact",
        description="Mirror a preset for KAITO_TUNE_MODEL_REGISTRY: kaito-tune model push "
        "microsoft/Phi-3-mini-4k-instruct@<revision> <registry>/phi-3-mini-4k-instruct:<revision>",
    )
    parser.add_argument("source", help="a model directory, or REPO_ID@REVISION on the hub")
    parser.add_argument("reference", help="registry/repository:tag")
    parser.add_argument("--format", choices=mediatypes.FORMATS, default="modelpack", help="artifact layout")
    parser.add_argument("--preset", help="the preset name recorded in the artifact (default: the folder's)")
    parser.add_argument("--token-file", metavar="FILE", help="hub token for a gated REPO_ID")
    parser.add_argument("--hub-endpoint", default=os.environ.get("HF_ENDPOINT"), metavar="URL")
    _add_common(parser)
    parser.set_defaults(func=_guarded(_model_push))

    parser = commands.add_parser("pull", help="pull a model artifact into a directory (verified)")
    parser.add_argument("reference", help="registry/repository:tag or registry/repository@sha256:...")
    parser.add_argument("directory", help="destination; must be empty or absent unless --replace")
    parser.add_argument("--replace", action="store_true", help="replace a non-empty destination")
    _add_common(parser)
    parser.set_defaults(func=_guarded(_pull))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("push", help="push an adapter directory as an OCI artifact")
    parser.add_argument(
        "directory", help="adapter directory (adapter_config.json, adapter_model.safetensors, ...)"
    )
    parser.add_argument("reference", help="registry/repository:tag")
    parser.add_argument("--format", choices=mediatypes.FORMATS, default="modelpack", help="artifact layout")
    facts = parser.add_argument_group("config facts (default: the directory's metadata.json)")
    for flag in ("--preset", "--model-revision", "--method", "--config-sha256", "--data-sha256"):
        facts.add_argument(flag)
    parser.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--digest-file", metavar="PATH", help="also write the manifest digest here")
    parser.add_argument(
        "--ignore-gate",
        action="store_true",
        help=f"push even when metadata.json says the adapter failed EvaluationConfig.min_improvement "
        f"(refused otherwise, exit status {EXIT_NOT_BETTER})",
    )
    _add_common(parser)
    parser.set_defaults(func=_guarded(_push))

    parser = subparsers.add_parser(
        "pull", help="pull an adapter or data artifact into a directory (verified)"
    )
    parser.add_argument("reference", help="registry/repository:tag or registry/repository@sha256:...")
    parser.add_argument("directory", help="destination; must be empty or absent unless --replace")
    parser.add_argument("--replace", action="store_true", help="replace a non-empty destination")
    _add_common(parser)
    parser.set_defaults(func=_guarded(_pull))

    parser = subparsers.add_parser("inspect", help="print an artifact's manifest facts and config as JSON")
    parser.add_argument("reference")
    _add_common(parser)
    parser.set_defaults(func=_guarded(_inspect))

    parser = subparsers.add_parser("fetch-data", help="download tuning input (URLs or a data image) into DIR")
    parser.add_argument("--urls", nargs="+", default=[], metavar="URL")
    parser.add_argument(
        "--urls-file",
        metavar="FILE",
        help="read the URLs from FILE, one per line (a signed URL's query is a credential: in the argv "
        "every process listing shows it)",
    )
    parser.add_argument(
        "--expect-urls-sha256", metavar="HEX", help="refuse a --urls-file whose content has another sha256"
    )
    parser.add_argument("--image", help="data image whose /data is extracted")
    parser.add_argument("--dest", required=True, metavar="DIR")
    parser.add_argument(
        "--allow-network",
        action="append",
        default=[],
        type=_network,
        metavar="CIDR",
        help="allow URL hosts in this network despite the host policy (repeatable): an in-cluster or "
        "air-gapped data server, or 127.0.0.0/8 for local development",
    )
    _add_common(parser)
    parser.set_defaults(func=_guarded(_fetch_data))

    parser = subparsers.add_parser(
        "fetch-model", help="fetch a preset's weights (OCI artifact or hub) into a pod, through a cache"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="OCI model artifact or KAITO-layout image")
    source.add_argument("--hub", metavar="REPO_ID@REVISION", help="hub repository at a revision")
    parser.add_argument("--dest", required=True, metavar="PATH", help="where the model appears (a link)")
    parser.add_argument("--cache", metavar="DIR", help="shared model cache (entries keyed by content)")
    parser.add_argument(
        "--cache-max-gib", type=float, default=0, help="evict unused entries above this (0: never)"
    )
    parser.add_argument(
        "--config-only", action="store_true", help="configs and tokenizer only (the CPU pre-flight)"
    )
    parser.add_argument("--token-file", metavar="FILE", help="hub token (the modelAccessSecret's HF_TOKEN)")
    parser.add_argument("--hub-endpoint", default=os.environ.get("HF_ENDPOINT"), metavar="URL")
    parser.add_argument("--summary-file", metavar="PATH", help="write the result as JSON here")
    _add_common(parser)
    parser.set_defaults(func=_guarded(_fetch_model))

    _register_model(subparsers)
