#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh Debian machine, and reuses what is already
# there: Debian packages, the .venv (re-installed only when pyproject.toml changes), the Go-built
# Kubernetes tools (cached by version outside the checkout, see hack/build-tools.sh) and the container
# images the local node runs (rebuilt only when their inputs change, see hack/images.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

apt_packages=(docker-registry apache2-utils skopeo openssl iproute2 util-linux curl ca-certificates)
# The node: runc and the CNI plugins under containerd, iptables and conntrack for kube-proxy.
apt_packages+=(runc containernetworking-plugins iptables conntrack)
# Images: buildah builds the Dockerfiles on a base made by mmdebstrap; pause is compiled with gcc.
apt_packages+=(buildah mmdebstrap busybox-static gcc libc6-dev)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts its registry as a service on port 5000; the tests start their own on free ports.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -f $stamp ]]; then
  echo "setup: creating .venv and installing the project (pip cache: ${PIP_CACHE_DIR:-~/.cache/pip})"
  [[ -x .venv/bin/python ]] || "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # hack/images.sh's wheelhouse holds the pinned wheels (torch included) once it has been filled.
  wheelhouse="${KAITO_TUNE_CACHE:-$HOME/.cache/kaito-tune}/wheelhouse/cp311-x86_64"
  find_links=()
  [[ -d $wheelhouse ]] && find_links=(--find-links "$wheelhouse")
  .venv/bin/python -m pip install -q "${find_links[@]}" -e ".[train,dev]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

bash hack/build-tools.sh
bash hack/install-olah.sh >/dev/null  # the hub stand-in the model-weights tests run (tests/fixtures/hub.py)
bash hack/install-mlflow.sh >/dev/null  # the tracking server the MLflow tests run (tests/fixtures/mlflow.py)
bash hack/images.sh build
