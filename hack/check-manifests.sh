#!/usr/bin/env bash
# Check Kubernetes manifests offline: `helm lint` + `helm template` for each chart, then kubeconform on
# the rendered objects and on the given files, against a local schema dir (see hack/manifest_schemas.py;
# the tests write one from the local control plane's OpenAPI and the Workspace CRD). Nothing is downloaded.
#
#   hack/check-manifests.sh --schemas DIR [--chart CHART_DIR]... [FILE|-]...
#
# Every kind needs a schema: a kind without one is an error, so nothing passes unchecked.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
schemas="" charts=() files=()
while (($#)); do
  case "$1" in
    --schemas) schemas="$2"; shift 2 ;;
    --chart) charts+=("$2"); shift 2 ;;
    -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
    *) files+=("$1"); shift ;;
  esac
done
[[ -d "$schemas" ]] || { echo "check-manifests: --schemas DIR is required (a folder of JSON schemas)" >&2; exit 2; }
((${#charts[@]} + ${#files[@]})) || { echo "check-manifests: give --chart DIR and/or manifest files" >&2; exit 2; }

tool() {
  "$HACK_DIR/build-tools.sh" --print-path "$1" 2>/dev/null \
    || { echo "check-manifests: $1 is not built: run hack/build-tools.sh" >&2; exit 1; }
}
kubeconform="$(tool kubeconform)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ((${#charts[@]})); then
  helm="$(tool helm)"
  # Helm keeps its caches and config away from the user's home and never reaches a repository.
  export HELM_CACHE_HOME="$work/helm-cache" HELM_CONFIG_HOME="$work/helm-config" HELM_DATA_HOME="$work/helm-data"
  for chart in "${charts[@]}"; do
    "$helm" lint --strict "$chart"
    rendered="$work/$(basename "$chart").yaml"
    "$helm" template check "$chart" --namespace kaito-tune-system --include-crds >"$rendered"
    files+=("$rendered")
  done
fi

# The layout hack/manifest_schemas.py writes.
"$kubeconform" -summary -output text \
  -schema-location "$schemas/{{ .Group }}/{{ .ResourceKind }}-{{ .ResourceAPIVersion }}.json" \
  "${files[@]}"
