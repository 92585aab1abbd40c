#!/usr/bin/env bash
# Install (or reuse) olah, a self-hosted Hugging Face hub mirror, in a venv of its own. The tests use it as
# a hub-compatible server on loopback (tests/fixtures/hub.py): the real hub cannot be reached here.
#
# Cached OUTSIDE the repository, by version:
#   ${KAITO_TUNE_CACHE:-$HOME/.cache/kaito-tune}/tools/olah-<version>/venv/bin/olah-cli
# A warm call only checks a stamp file. Its own venv keeps olah's pins (fastapi, httpx, ...) out of .venv.
#
# Usage:
#   hack/install-olah.sh                 install if missing, print the olah-cli path
#   hack/install-olah.sh --print-path    print the olah-cli path (no install); exit 1 if not installed
set -euo pipefail

OLAH_VERSION="0.5.4"
# Bumped when the recipe changes in a way the version does not show (part of the stamp).
OLAH_RECIPE="r1"

dir="${KAITO_TUNE_CACHE:-$HOME/.cache/kaito-tune}/tools/olah-$OLAH_VERSION"
cli="$dir/venv/bin/olah-cli"
stamp="$dir/.installed-$OLAH_RECIPE"

if [[ ${1:-} == --print-path ]]; then
  [[ -f $stamp && -x $cli ]] || exit 1
  echo "$cli"
  exit 0
fi

if [[ -f $stamp && -x $cli ]]; then
  echo "$cli"
  exit 0
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
echo "install-olah: installing olah $OLAH_VERSION into $dir/venv (pip cache: ${PIP_CACHE_DIR:-~/.cache/pip})" >&2
rm -rf "$dir/venv"
mkdir -p "$dir"
"$python" -m venv "$dir/venv"
"$dir/venv/bin/python" -m pip install -q "olah==$OLAH_VERSION" >&2
"$dir/venv/bin/python" -c "import olah" # fails loudly if the install is broken
rm -f "$dir"/.installed-*
touch "$stamp"
echo "$cli"
