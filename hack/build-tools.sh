#!/usr/bin/env bash
# Build (or reuse) the pinned tools the local cluster and the tests need, compiled from Go modules with
# this machine's Go toolchain: the control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler), the node (kubelet, kube-proxy, containerd with its runc shim and ctr, CoreDNS,
# local-path-provisioner), the chart tools (helm, kubeconform) and the OCI artifact clients the artifact
# tests check our pushes with (the ORAS CLI, and modelpack-validate: ModelPack's config schema validator),
# and the controller managers of Kueue (queues our tuning Jobs) and JobSet (runs our multi-node tuning as
# a JobSet); hack/kueue.py and hack/jobset.py run them against a control plane.
#
# Binaries are cached OUTSIDE the repository, one folder per tool and version:
#   ${KAITO_TUNE_CACHE:-$HOME/.cache/kaito-tune}/tools/<name>-<version>/<name>
# so a fresh clone (CI) reuses them and a warm call only checks that the files exist.
#
# Usage:
#   hack/build-tools.sh                 build what is missing, print where each binary is
#   hack/build-tools.sh --print-bin-dir NAME
#                                       print the folder holding NAME (no build); exit 1 if not built
#   hack/build-tools.sh --print-path NAME
#                                       print the binary path of NAME (no build); exit 1 if not built
set -euo pipefail

# Kubernetes v1.36.3 builds with go1.26 and has CEL transition rules (oldSelf) and messageExpression.
# etcd is taken at the version that Kubernetes release pins in its own go.mod (tested together).
K8S_VERSION="v1.36.3"
ETCD_VERSION="v3.6.8"
HELM_VERSION="v3.22.0"
KUBECONFORM_VERSION="v0.7.0"
CONTAINERD_VERSION="v2.4.2"
COREDNS_VERSION="v1.14.7"
LOCAL_PATH_VERSION="v0.0.30"
ORAS_VERSION="v1.3.6"
# github.com/modelpack/model-spec ships its validator as a Go package (schema) but no command: a small
# main in a scaffold module (modelpack_scaffold) validates the config JSON files named as arguments.
MODEL_SPEC_VERSION="v0.0.7"
# Kueue: the newest v0.17.x the module proxy serves (v0.17.2+ are refused there). Its go.mod has no
# replace directives, so `go install module@version` builds it. hack/kueue.py installs the CRDs of this
# same version (the module's config/components/crd/bases): keep the two in step by changing only this.
KUEUE_VERSION="v0.17.1"
# JobSet: the module proxy refuses the module's version list, which `go install module@version` reads
# (403), but serves this exact version to `go mod download`: build_jobset builds its main package (the
# module root) there. hack/jobset.py installs the CRDs of this same version, as for Kueue.
JOBSET_VERSION="v0.11.1"
# Commands built from the k8s.io/kubernetes scaffold; each reports its real version (kubectl version,
# charts' kubeVersion checks), which the stock ldflags leave at v0.0.0-master.
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
# Bumped when the recipe changes in a way the version does not show (it is part of the cache key).
K8S_RECIPE="r2"

CACHE_ROOT="${KAITO_TUNE_CACHE:-$HOME/.cache/kaito-tune}"
TOOLS_DIR="$CACHE_ROOT/tools"

tool_version() {
  case "$1" in
    etcd) echo "$ETCD_VERSION" ;;
    kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy | kubectl)
      echo "$K8S_VERSION-$K8S_RECIPE"
      ;;
    containerd | containerd-shim-runc-v2 | ctr) echo "$CONTAINERD_VERSION" ;;
    coredns) echo "$COREDNS_VERSION" ;;
    local-path-provisioner) echo "$LOCAL_PATH_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    kubeconform) echo "$KUBECONFORM_VERSION" ;;
    oras) echo "$ORAS_VERSION" ;;
    modelpack-validate) echo "$MODEL_SPEC_VERSION" ;;
    kueue) echo "$KUEUE_VERSION" ;;
    jobset) echo "$JOBSET_VERSION" ;;
    *)
      echo "unknown tool '$1': expected one of ${ALL_TOOLS[*]}" >&2
      return 2
      ;;
  esac
}

ALL_TOOLS=(etcd "${K8S_COMMANDS[@]}" containerd containerd-shim-runc-v2 ctr coredns local-path-provisioner
  helm kubeconform oras modelpack-validate kueue jobset)

tool_path() {
  local version
  version="$(tool_version "$1")" || return 2
  echo "$TOOLS_DIR/$1-$version/$1"
}

log() { echo "[build-tools] $*" >&2; }

export GOFLAGS="${GOFLAGS:-} -p=2 -trimpath"
export CGO_ENABLED=0
LDFLAGS="-s -w"

# Module scaffold that imports k8s.io/kubernetes as a library: require it and replace every staging
# module (./staging/src/k8s.io/X in its go.mod) with the published k8s.io/X v0.Y.Z.
k8s_scaffold() {
  local dir
  dir="$CACHE_ROOT/scaffold/k8s-$K8S_VERSION-$(echo "${K8S_COMMANDS[*]}" | sha256sum | cut -c1-8)"
  if [[ -f "$dir/go.sum" && -f "$dir/.complete" ]]; then
    echo "$dir"
    return
  fi
  mkdir -p "$dir"
  local gomod staging_version
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
  [[ -f "$gomod" ]] || { log "could not download k8s.io/kubernetes@$K8S_VERSION"; return 1; }
  staging_version="v0.${K8S_VERSION#v1.}"
  {
    echo "module kaito-tune.local/k8s-tools"
    echo
    sed -n 's/^go \(.*\)$/go \1/p' "$gomod"
    echo
    echo "require ("
    echo "	k8s.io/kubernetes $K8S_VERSION"
    echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo ")"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/k8s.io/.*$#\t\1 => \1 '"$staging_version"'#p' "$gomod"
    echo ")"
  } >"$dir/go.mod"
  mkdir -p "$dir/etcd"
  cat >"$dir/tools.go" <<EOF
//go:build tools

// Package tools pins the commands this module builds.
package tools

import (
$(printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "${K8S_COMMANDS[@]}")
)
EOF
  cat >"$dir/etcd/main.go" <<'EOF'
// Command etcd is the etcd server, built from the server module Kubernetes pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (cd "$dir" && go mod tidy -e >/dev/null 2>"$dir/tidy.log") || { cat "$dir/tidy.log" >&2; return 1; }
  touch "$dir/.complete"
  echo "$dir"
}

# -X values that make a Kubernetes binary report its release (both version packages it links).
k8s_version_ldflags() {
  local minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  local pkg flags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build_k8s_tools() {
  local need=()
  for t in etcd "${K8S_COMMANDS[@]}"; do
    [[ -x "$(tool_path "$t")" ]] || need+=("$t")
  done
  ((${#need[@]})) || return 0
  local dir out
  dir="$(k8s_scaffold)"
  out="$(mktemp -d "$CACHE_ROOT/build.XXXXXX")"
  for t in "${need[@]}"; do
    local pkg ldflags="$LDFLAGS"
    case "$t" in
      etcd) pkg="./etcd" ;;
      *) pkg="k8s.io/kubernetes/cmd/$t" ldflags+="$(k8s_version_ldflags)" ;;
    esac
    log "building $t $(tool_version "$t") (cold builds take many minutes)"
    local start=$SECONDS
    (cd "$dir" && go build -ldflags="$ldflags" -o "$out/$t" "$pkg")
    install_tool "$t" "$out/$t"
    log "built $t in $((SECONDS - start))s"
  done
  rm -rf "$out"
}

# go install needs the module without replace directives; none of these has any.
# build_go_install NAME PACKAGE [GO INSTALL FLAGS...]
build_go_install() {
  local name="$1" pkg="$2"
  shift 2
  [[ -x "$(tool_path "$name")" ]] && return 0
  local out start=$SECONDS
  out="$(mktemp -d "$CACHE_ROOT/build.XXXXXX")"
  log "building $name $(tool_version "$name")"
  GOBIN="$out" go install -ldflags="$LDFLAGS" "$@" "$pkg@$(tool_version "$name")"
  install_tool "$name" "$out/$(basename "$pkg")"
  rm -rf "$out"
  log "built $name in $((SECONDS - start))s"
}

# Module scaffold for modelpack-validate: a main around model-spec's schema package, which embeds the
# config schema of that release (so the validator is exactly the spec's, no copy of it here).
modelpack_scaffold() {
  local dir="$CACHE_ROOT/scaffold/modelpack-$MODEL_SPEC_VERSION"
  if [[ -f "$dir/go.sum" && -f "$dir/.complete" ]]; then
    echo "$dir"
    return
  fi
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<EOF
module kaito-tune.local/modelpack-validate

go 1.23

require github.com/modelpack/model-spec $MODEL_SPEC_VERSION
EOF
  cat >"$dir/main.go" <<'EOF'
// Command modelpack-validate checks ModelPack config JSON files (application/vnd.cncf.model.config.v1+json)
// with the model-spec module's own validator: its JSON schema and its Go types. It prints one line per
// file and exits 1 if any file is not valid, 2 on a usage error.
package main

import (
	"fmt"
	"os"

	"github.com/modelpack/model-spec/schema"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: modelpack-validate CONFIG.json...")
		os.Exit(2)
	}
	failed := false
	for _, name := range os.Args[1:] {
		if err := validate(name); err != nil {
			fmt.Printf("%s: invalid: %v\n", name, err)
			failed = true
			continue
		}
		fmt.Printf("%s: valid\n", name)
	}
	if failed {
		os.Exit(1)
	}
}

func validate(name string) error {
	file, err := os.Open(name)
	if err != nil {
		return err
	}
	defer file.Close()
	return schema.ValidatorMediaTypeModelConfig.Validate(file)
}
EOF
  (cd "$dir" && go mod tidy >/dev/null 2>"$dir/tidy.log") || { cat "$dir/tidy.log" >&2; return 1; }
  touch "$dir/.complete"
  echo "$dir"
}

build_modelpack_validate() {
  local name=modelpack-validate
  [[ -x "$(tool_path "$name")" ]] && return 0
  local dir out start=$SECONDS
  dir="$(modelpack_scaffold)"
  out="$(mktemp -d "$CACHE_ROOT/build.XXXXXX")"
  log "building $name $(tool_version "$name")"
  (cd "$dir" && go build -ldflags="$LDFLAGS" -o "$out/$name" .)
  install_tool "$name" "$out/$name"
  rm -rf "$out"
  log "built $name in $((SECONDS - start))s"
}

# `go build` of the module's main package, in the downloaded module itself (the module cache is read-only,
# but a build only reads it); the version and commit it logs at start come from the download's info.
build_jobset() {
  local name=jobset
  [[ -x "$(tool_path "$name")" ]] && return 0
  local info dir commit out start=$SECONDS
  info="$(cd / && go mod download -json "sigs.k8s.io/jobset@$JOBSET_VERSION")" || {
    log "could not download sigs.k8s.io/jobset@$JOBSET_VERSION: $info"
    return 1
  }
  dir="$(sed -n 's/^\t"Dir": "\(.*\)",*$/\1/p' <<<"$info")"
  commit="$(sed -n 's/^\t\t"Hash": "\(.*\)",*$/\1/p' <<<"$info")"
  out="$(mktemp -d "$CACHE_ROOT/build.XXXXXX")"
  log "building $name $(tool_version "$name")"
  local pkg=sigs.k8s.io/jobset/pkg/version
  go -C "$dir" build -o "$out/$name" \
    -ldflags="$LDFLAGS -X $pkg.GitVersion=$JOBSET_VERSION -X $pkg.GitCommit=$commit" .
  install_tool "$name" "$out/$name"
  rm -rf "$out"
  log "built $name in $((SECONDS - start))s"
}

# Move into place atomically so a concurrent or interrupted build never leaves a half-written binary.
install_tool() {
  local name="$1" built="$2" dest
  dest="$(tool_path "$name")"
  mkdir -p "$(dirname "$dest")"
  mv -f "$built" "$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
}

case "${1:-}" in
  --print-bin-dir | --print-path)
    [[ -n "${2:-}" ]] || { echo "usage: $0 $1 NAME" >&2; exit 2; }
    path="$(tool_path "$2")"
    [[ -x "$path" ]] || { echo "$2 is not built at $path: run hack/build-tools.sh" >&2; exit 1; }
    if [[ "$1" == --print-bin-dir ]]; then dirname "$path"; else echo "$path"; fi
    exit 0
    ;;
  "") ;;
  *)
    echo "usage: $0 [--print-bin-dir NAME | --print-path NAME]" >&2
    exit 2
    ;;
esac

mkdir -p "$TOOLS_DIR"
command -v go >/dev/null || { echo "go is not on PATH: install the Go toolchain (go1.26) first" >&2; exit 1; }
started=$SECONDS
build_k8s_tools
build_go_install kubeconform github.com/yannh/kubeconform/cmd/kubeconform
build_go_install helm helm.sh/helm/v3/cmd/helm
# containerd: no btrfs, devmapper or zfs snapshotters (cgo-free; the node uses overlayfs).
for cmd in containerd containerd-shim-runc-v2 ctr; do
  build_go_install "$cmd" "github.com/containerd/containerd/v2/cmd/$cmd" -tags "no_btrfs no_devmapper no_zfs"
done
build_go_install coredns github.com/coredns/coredns
build_go_install local-path-provisioner github.com/rancher/local-path-provisioner
build_go_install oras oras.land/oras/cmd/oras
build_modelpack_validate
# Kueue links client-go, controller-runtime and all its integrations' APIs, JobSet the first two: cold
# builds take minutes, so they run at low priority (a subshell that lowers its own, inherited by go and
# the compilers).
(
  renice -n 10 -p "$BASHPID" >/dev/null 2>&1 || true
  # It logs its version at start and sends it as its user agent; the stock value is v0.0.0-main.
  build_go_install kueue sigs.k8s.io/kueue/cmd/kueue \
    -ldflags="$LDFLAGS -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
  build_jobset
)
for t in "${ALL_TOOLS[@]}"; do
  echo "$t $(tool_version "$t") $(tool_path "$t")"
done
log "done in $((SECONDS - started))s"
