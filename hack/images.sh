#!/usr/bin/env bash
# Build the project's container images here with buildah, without Docker and without pulling anything
# from a container registry, and copy them to a (local, plain-HTTP) registry for the local node.
#
#   base        localhost/kaito-tune/base:bookworm-py311   Debian bookworm (mmdebstrap, minbase) + python3.11
#   controller  ghcr.io/kaito-tune/controller:VERSION      docker/controller.Dockerfile on the base
#   tools       ghcr.io/kaito-tune/tools:VERSION           docker/tools.Dockerfile on the base
#   preflight   ghcr.io/kaito-tune/preflight:VERSION       docker/preflight.Dockerfile on the base (no torch)
#   runtime     ghcr.io/kaito-tune/runtime:VERSION         docker/runtime.Dockerfile on the base (torch)
#   pause       localhost/kaito-tune/pause:3.10            Kubernetes' pause.c, static, FROM scratch
#   busybox     localhost/kaito-tune/busybox:1.35          Debian's busybox-static, FROM scratch
#   coredns     localhost/kaito-tune/coredns:v1.14.7       $COREDNS_BIN, FROM scratch (skipped if missing)
#
# The ghcr.io names are the chart's and Settings' defaults; they stay local (nothing is pushed there).
# Python packages come from a wheelhouse on this machine, filled once with pip download from the pins of
# pyproject.toml and mounted read-only into the build (which runs with --network none).
#
# Every image carries a label io.kaito-tune.inputs: the hash of what it is made from (Dockerfile,
# pyproject.toml, the copied sources, the base image, the recipe); an image whose label matches is not
# rebuilt, so a warm `build` takes seconds. buildah's layer cache keeps the dependency layers when only
# the sources change.
#
# Cache: ${KAITO_TUNE_CACHE:-$HOME/.cache/kaito-tune}/wheelhouse/cp311-x86_64 (wheels, and a
# .complete-<hash> stamp per requirements set) and .../images (build context, pause binary, logs).
# Images live in buildah's storage (/var/lib/containers/storage for root).
#
# Needs (Debian): buildah runc mmdebstrap skopeo busybox-static gcc libc6-dev; Go (for pause.c's
# module source) and the project's .venv (for pip download).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: hack/images.sh COMMAND
  build           build the images that are missing or outdated; prints "NAME SIZE_MB" per image
                  (timings on stderr)
  push HOST:PORT  copy every built image to the plain-HTTP registry HOST:PORT as HOST:PORT/<path>:<tag>
                  (the name without its registry host); unchanged layers are not uploaded again
  list            "SOURCE_NAME REGISTRY_PATH" for every built image that push copies
Environment:
  KAITO_TUNE_CACHE        cache folder (default ~/.cache/kaito-tune)
  COREDNS_BIN             CoreDNS binary for the coredns image (default: hack/build-tools.sh's)
  KAITO_TUNE_PUSH_COMPRESSION
                          layer compression for push: zstd (default, level 1) or gzip
  KAITO_TUNE_APT_SOURCES  apt sources for the base image (default: this machine's)
EOF
}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

CACHE_ROOT="${KAITO_TUNE_CACHE:-$HOME/.cache/kaito-tune}"
STATE="$CACHE_ROOT/images"
WHEELHOUSE="$CACHE_ROOT/wheelhouse/cp311-x86_64"
LABEL=io.kaito-tune.inputs
# runc: crun refuses this machine's hybrid cgroup v1/v2 layout; the local node runs runc anyway.
RUNTIME="${BUILDAH_RUNTIME:-runc}"
PY="${PYTHON:-$root/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3

# The base: the one recipe below; any change to it (or to the apt sources) makes a new base.
BASE_IMAGE=localhost/kaito-tune/base:bookworm-py311
BASE_SUITE=bookworm
# libgomp1 and libquadmath0: bitsandbytes' CPU library and torch's bundled libgfortran link them.
BASE_PACKAGES=python3,python3-venv,ca-certificates,netbase,tzdata,libgomp1,libquadmath0
BASE_DPKG_EXCLUDES=('/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*' '/usr/share/doc/*')
BASE_DPKG_INCLUDES=('/usr/share/doc/*/copyright' /usr/share/locale/locale.alias)
if [[ -n "${KAITO_TUNE_APT_SOURCES:-}" ]]; then
  APT_SOURCES="$KAITO_TUNE_APT_SOURCES"
elif [[ -s /etc/apt/sources.list.d/debian.sources ]]; then
  APT_SOURCES=/etc/apt/sources.list.d/debian.sources
else
  APT_SOURCES=/etc/apt/sources.list
fi

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
PAUSE_IMAGE=localhost/kaito-tune/pause:3.10
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
COREDNS_IMAGE="localhost/kaito-tune/coredns:$COREDNS_VERSION"
busybox_version() { # 1:1.35.0-4+deb12u1+b1 -> 1.35
  local v
  v=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null) || v=1.35
  v=${v#*:}
  echo "${v%%.*}.$(echo "$v" | cut -d. -f2)"
}
BUSYBOX_IMAGE="localhost/kaito-tune/busybox:$(busybox_version)"

PROJECT_VERSION=$(python3 -c \
  'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
PROJECT_IMAGES=(controller tools preflight runtime)
project_image() { echo "ghcr.io/kaito-tune/$1:$PROJECT_VERSION"; }
# What the node pulls (the base is only built upon).
pushed_images() {
  echo "$PAUSE_IMAGE" "$BUSYBOX_IMAGE" "$COREDNS_IMAGE"
  for name in "${PROJECT_IMAGES[@]}"; do project_image "$name"; done
}

log() { echo "images: $*" >&2; }
die() {
  log "$*"
  exit 1
}
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}'; }
hash_stdin() { sha256sum | cut -c1-16; }

# The label of a stored image, empty when there is no such image.
image_label() {
  buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true
}
image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true; }
up_to_date() { [[ "$(image_label "$1")" == "$2" ]]; }

# Hash of files and folders as the Dockerfiles copy them (no bytecode), paths and modes included.
hash_paths() {
  local filter=(\( -name __pycache__ -o -name '*.egg-info' \) -prune -o -type f ! -name '*.pyc')
  {
    find "$@" "${filter[@]}" -printf '%m %p\n' | LC_ALL=C sort
    find "$@" "${filter[@]}" -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
  } | hash_stdin
}

need() {
  local missing=() cmd
  for cmd in "$@"; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
  ((${#missing[@]} == 0)) \
    || die "missing ${missing[*]} (apt-get install buildah runc mmdebstrap skopeo busybox-static gcc libc6-dev)"
}

# ---- base ------------------------------------------------------------------------------------------

base_recipe() {
  echo "mmdebstrap --variant=minbase --hook-dir=merged-usr $BASE_SUITE include=$BASE_PACKAGES"
  echo "exclude=${BASE_DPKG_EXCLUDES[*]} include=${BASE_DPKG_INCLUDES[*]} dev-nodes-removed r1"
  cat "$APT_SOURCES"
}

build_base() {
  local inputs tmp ctr opts=() p
  inputs=$(base_recipe | hash_stdin)
  if up_to_date "$BASE_IMAGE" "$inputs"; then RESULT=cached; return; fi
  for p in "${BASE_DPKG_EXCLUDES[@]}"; do opts+=("--dpkgopt=path-exclude=$p"); done
  for p in "${BASE_DPKG_INCLUDES[@]}"; do opts+=("--dpkgopt=path-include=$p"); done
  tmp=$(mktemp -d "$STATE/base.XXXXXX")
  # The machine's apt sources (a file mmdebstrap reads as its mirror list); the tarball without /dev's
  # device nodes (the runtime provides /dev); resolv.conf and hostname come from the runtime too.
  # shellcheck disable=SC2016 # $1 is the hook's argument, expanded by mmdebstrap's shell
  nice mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr "${opts[@]}" --include="$BASE_PACKAGES" \
    --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"' \
    "$BASE_SUITE" - "$APT_SOURCES" 2>"$STATE/build-base.log" \
    | tar --delete --wildcards './dev/?*' >"$tmp/rootfs.tar" \
    || die "mmdebstrap failed; see $STATE/build-base.log"
  ctr=$(buildah from --quiet scratch)
  buildah add --quiet "$ctr" "$tmp/rootfs.tar" / >/dev/null
  buildah config --env LANG=C.UTF-8 \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash --label "$LABEL=$inputs" \
    --label "org.opencontainers.image.description=Debian $BASE_SUITE minbase with $BASE_PACKAGES" "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
  rm -rf "$tmp"
}

# ---- wheelhouse ------------------------------------------------------------------------------------

# Wheels for every pin (the runtime's set includes the others'), fetched once; pip skips files the
# folder already has, and the stamp skips pip altogether while pyproject.toml is unchanged.
fill_wheelhouse() {
  local reqs stamp
  reqs=$(python3 docker/requirements.py pyproject.toml train)
  stamp="$WHEELHOUSE/.complete-$(echo "$reqs" | hash_stdin)"
  [[ -f "$stamp" ]] && return 0
  mkdir -p "$WHEELHOUSE"
  log "downloading wheels into $WHEELHOUSE"
  "$PY" -m pip download --quiet --only-binary=:all: --dest "$WHEELHOUSE" -r <(echo "$reqs") >&2
  rm -f "$WHEELHOUSE"/.complete-*
  touch "$stamp"
}

# ---- the project's images --------------------------------------------------------------------------

COPIED=(pyproject.toml README.md docker/requirements.py contract tuning_controller presets artifacts trainer inference)

# The build context: only what the Dockerfiles copy, without bytecode (a fresh copy per build).
stage_context() {
  local ctx="$STATE/context"
  rm -rf "$ctx"
  mkdir -p "$ctx"
  tar --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -cf - "${COPIED[@]}" \
    | tar -C "$ctx" -xf -
  echo "$ctx"
}

build_project_image() {
  local name=$1 image inputs base_id ctx
  image=$(project_image "$name")
  base_id=$(image_id "$BASE_IMAGE")
  inputs=$({
    echo "$base_id"
    cat "docker/$name.Dockerfile"
    hash_paths "${COPIED[@]}"
  } | hash_stdin)
  if up_to_date "$image" "$inputs"; then RESULT=cached; return; fi
  fill_wheelhouse
  ctx=$(stage_context)
  nice buildah build --quiet --runtime "$RUNTIME" --layers --force-rm --network none --pull-never \
    --build-arg "BASE=$BASE_IMAGE" --volume "$WHEELHOUSE:/wheels:ro" --label "$LABEL=$inputs" --tag "$image" \
    --file "$root/docker/$name.Dockerfile" "$ctx" >"$STATE/build-$name.log" 2>&1 \
    || die "building $image failed; see $STATE/build-$name.log"
}

# ---- images for the local node ---------------------------------------------------------------------

# Kubernetes' own pause.c from the k8s.io/kubernetes module at the cluster's version, static.
build_pause() {
  local dir src inputs out tag
  dir=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])') \
    || die "go mod download k8s.io/kubernetes@$K8S_VERSION failed"
  src="$dir/build/pause/linux/pause.c"
  tag=$(sed -n 's/^TAG ?= *//p' "$dir/build/pause/Makefile")
  inputs=$({
    echo "pause r1 $K8S_VERSION $tag"
    gcc --version | head -1
    cat "$src"
  } | hash_stdin)
  if up_to_date "$PAUSE_IMAGE" "$inputs"; then RESULT=cached; return; fi
  out="$STATE/pause"
  mkdir -p "$out"
  gcc -Os -Wall -Werror -static -DVERSION="v$tag-$K8S_VERSION" -o "$out/pause" "$src"
  strip "$out/pause"
  binary_image "$PAUSE_IMAGE" "$out/pause" 65535 "$inputs" "$tag"
}

# binary_image IMAGE BINARY UID INPUTS VERSION: one static binary at /NAME, FROM scratch, its entrypoint.
binary_image() {
  local ctr name
  name=$(basename "$2")
  ctr=$(buildah from --quiet scratch)
  buildah copy --quiet --chmod 0755 "$ctr" "$2" "/$name" >/dev/null
  buildah config --entrypoint "[\"/$name\"]" --user "$3:$3" --label "$LABEL=$4" \
    --label "org.opencontainers.image.version=$5" "$ctr"
  buildah commit --quiet --rm "$ctr" "$1" >/dev/null
}

# Debian's busybox-static with its applets as /bin links, and a /tmp, for the helper pods.
build_busybox() {
  local inputs dir ctr applet
  if [[ ! -x /bin/busybox ]] || ! dpkg-query -W busybox-static >/dev/null 2>&1; then
    die "busybox-static is not installed: apt-get install busybox-static"
  fi
  inputs=$(echo "busybox r1 $(dpkg-query -W -f='${Version}' busybox-static) $(sha256sum </bin/busybox)" \
    | hash_stdin)
  if up_to_date "$BUSYBOX_IMAGE" "$inputs"; then RESULT=cached; return; fi
  dir=$(mktemp -d "$STATE/busybox.XXXXXX")
  mkdir -p "$dir/bin" "$dir/tmp" "$dir/etc"
  chmod 1777 "$dir/tmp"
  cp /bin/busybox "$dir/bin/busybox"
  for applet in $("$dir/bin/busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$dir/bin/$applet"
  done
  printf '%s\n' root:x:0:0:root:/root:/bin/sh nobody:x:65534:65534:nobody:/nonexistent:/bin/false \
    >"$dir/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
  ctr=$(buildah from --quiet scratch)
  buildah copy --quiet "$ctr" "$dir" / >/dev/null
  buildah config --env PATH=/bin --cmd '["sh"]' --label "$LABEL=$inputs" "$ctr"
  buildah commit --quiet --rm "$ctr" "$BUSYBOX_IMAGE" >/dev/null
  rm -rf "$dir"
}

coredns_bin() {
  if [[ -n "${COREDNS_BIN:-}" ]]; then
    echo "$COREDNS_BIN"
  else
    bash hack/build-tools.sh --print-path coredns 2>/dev/null \
      || echo "$CACHE_ROOT/tools/coredns-$COREDNS_VERSION/coredns"
  fi
}

build_coredns() {
  local bin inputs
  bin=$(coredns_bin)
  if [[ ! -x "$bin" ]]; then
    log "skipping $COREDNS_IMAGE: no CoreDNS binary at $bin (hack/build-tools.sh builds it, or set COREDNS_BIN)"
    RESULT=skipped
    return
  fi
  inputs=$(echo "coredns r1 $COREDNS_VERSION $(sha256sum <"$bin")" | hash_stdin)
  if up_to_date "$COREDNS_IMAGE" "$inputs"; then RESULT=cached; return; fi
  binary_image "$COREDNS_IMAGE" "$bin" 65532 "$inputs" "$COREDNS_VERSION"
}

# Removes the unnamed images no named image is built on: buildah's layer cache of older builds (a
# runtime whose pins changed leaves a 6 GB layer behind) and of failed ones. The cache of the current
# images stays: each of its images' layers are a prefix of a named image's.
prune_stale() {
  local id
  buildah images --all --format '{{.ID}} {{.Name}}' | while read -r id name; do
    echo "$id $name $(buildah inspect --type image --format '{{.OCIv1.RootFS.DiffIDs}}' "$id")"
  done | python3 -c '
import sys
images = [line.split(" ", 2) for line in sys.stdin.read().splitlines()]
layers = {image_id: diff_ids.strip("[]").split() for image_id, _, diff_ids in images}
named = [layers[image_id] for image_id, name, _ in images if name != "<none>"]
for image_id, name, _ in images:
    mine = layers[image_id]
    if name == "<none>" and not any(kept[: len(mine)] == mine for kept in named):
        print(image_id)
' | while read -r id; do buildah rmi "$id" >/dev/null 2>&1 || true; done
}

# ---- commands --------------------------------------------------------------------------------------

# Uncompressed size in MB (buildah prints it with three significant digits).
size_mb() {
  buildah images --format '{{.Size}}' "$1" | awk '{
    f = $2 == "GB" ? 1000 : $2 == "MB" ? 1 : $2 == "KB" || $2 == "kB" ? 0.001 : 0.000001
    printf "%.1f\n", $1 * f }'
}

# Runs one build step (a function that sets RESULT to cached or skipped when it builds nothing; errors
# end the script) with its timing on stderr and the image's size on stdout.
step() {
  local image=$1 start
  shift
  start=$(now)
  RESULT=built
  "$@"
  case $RESULT in
    built) log "$image built in $(since "$start")s" ;;
    cached) log "$image up to date ($(since "$start")s)" ;;
    skipped) return 0 ;;
  esac
  echo "$image $(size_mb "$image")"
}

cmd_build() {
  need buildah "$RUNTIME" mmdebstrap gcc go flock
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  flock 9 # one build at a time (they share the staged context)
  local start name
  start=$(now)
  step "$BASE_IMAGE" build_base
  step "$PAUSE_IMAGE" build_pause
  step "$BUSYBOX_IMAGE" build_busybox
  step "$COREDNS_IMAGE" build_coredns
  for name in "${PROJECT_IMAGES[@]}"; do
    step "$(project_image "$name")" build_project_image "$name"
    [[ $RESULT == cached ]] || BUILT=1
  done
  if [[ -n ${BUILT:-} ]]; then
    prune_stale
  fi
  log "build done in $(since "$start")s"
}

# The images push copies that exist here, one per line.
built_images() {
  local stored image
  stored=$(buildah images --format '{{.Name}}:{{.Tag}}')
  for image in $(pushed_images); do
    if grep -qxF "$image" <<<"$stored"; then
      echo "$image"
    else
      log "not built: $image (hack/images.sh build)"
    fi
  done
}

registry_path() { echo "${1#*/}"; } # ghcr.io/kaito-tune/runtime:0.1.0 -> kaito-tune/runtime:0.1.0

cmd_list() {
  local image
  need buildah
  for image in $(built_images); do echo "$image $(registry_path "$image")"; done
}

# zstd level 1 by default, measured here (2 cores) with the 6.6 GB runtime to a loopback registry: a cold
# push takes the same with zstd -1 (3.0 GB) and gzip (3.2 GB), 72 s from the page cache and 115-130 s
# from disk, bound by reading the layers out of buildah's storage (55 s alone), not by compressing;
# but containerd 2.4 pulls and unpacks the zstd image in 43 s against 53 s for gzip. skopeo cannot
# push uncompressed layers to a registry (its docker transport always compresses).
cmd_push() {
  local registry=$1 image start all compression level=()
  [[ $registry =~ ^[^/]+:[0-9]+$ ]] || die "push: expected HOST:PORT, got '$registry'"
  compression="${KAITO_TUNE_PUSH_COMPRESSION:-zstd}"
  [[ $compression == zstd || $compression == gzip ]] || die "KAITO_TUNE_PUSH_COMPRESSION: zstd or gzip"
  if [[ $compression == zstd ]]; then level=(--dest-compress-level 1); fi
  need buildah skopeo
  all=$(now)
  for image in $(built_images); do
    start=$(now)
    # Layers the registry has (known from containers/image's blob info cache) are not compressed
    # or uploaded again: an unchanged image costs a manifest check.
    skopeo copy --quiet --dest-tls-verify=false --dest-compress-format "$compression" "${level[@]}" \
      "containers-storage:$image" "docker://$registry/$(registry_path "$image")" \
      2> >(grep -v 'using prior storage driver' >&2) \
      || die "pushing $image to $registry failed"
    log "pushed $image to $registry/$(registry_path "$image") in $(since "$start")s"
  done
  log "push done in $(since "$all")s"
}

case "${1:-}" in
  build) cmd_build ;;
  push)
    [[ $# -eq 2 ]] || {
      usage >&2
      exit 2
    }
    cmd_push "$2"
    ;;
  list) cmd_list ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
