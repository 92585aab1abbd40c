#!/usr/bin/env bash
# Install (or reuse) the MLflow tracking server in a venv of its own. The tests start it on loopback
# (tests/fixtures/mlflow.py) to read back what the trainer logged, with MLflow's basic-auth app (the `auth`
# extra) where a test checks that credentials reach it. Its own venv because the full `mlflow` package pins
# graphene, which wants python-dateutil<3 while kubernetes (in .venv) wants >=3; .venv and the runtime
# image carry only the client, mlflow-skinny, at the same version.
#
# Cached OUTSIDE the repository, by version:
#   ${KAITO_TUNE_CACHE:-$HOME/.cache/kaito-tune}/tools/mlflow-<version>/venv/bin/mlflow
#
# Usage:
#   hack/install-mlflow.sh                 install if missing, print the mlflow path
#   hack/install-mlflow.sh --print-path    print the mlflow path (no install); exit 1 if not installed
set -euo pipefail

MLFLOW_VERSION="3.17.2"  # = pyproject.toml's mlflow-skinny pin
MLFLOW_RECIPE="r2"  # r2: the auth extra (Flask-WTF), for the basic-auth server the credential tests run

dir="${KAITO_TUNE_CACHE:-$HOME/.cache/kaito-tune}/tools/mlflow-$MLFLOW_VERSION"
cli="$dir/venv/bin/mlflow"
stamp="$dir/.installed-$MLFLOW_RECIPE"

if [[ -f $stamp && -x $cli ]]; then
  echo "$cli"
  exit 0
fi
if [[ ${1:-} == --print-path ]]; then
  exit 1
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
echo "install-mlflow: installing mlflow $MLFLOW_VERSION into $dir/venv (pip cache: ${PIP_CACHE_DIR:-~/.cache/pip})" >&2
rm -rf "$dir/venv"
mkdir -p "$dir"
"$python" -m venv "$dir/venv"
"$dir/venv/bin/python" -m pip install -q "mlflow[auth]==$MLFLOW_VERSION" >&2
"$dir/venv/bin/mlflow" --version >/dev/null # fails loudly if the install is broken
rm -f "$dir"/.installed-*
touch "$stamp"
echo "$cli"
