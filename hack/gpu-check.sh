#!/usr/bin/env bash
# The GPU check (issue 14 item 7): phi-3-mini-shaped QLoRA through the shipped code path on one GPU
# (random weights built on the GPU), in under 10 minutes, printing one JSON object: tokens/s, MFU, peak GPU
# memory against presets/memory.py's estimate, sdpa vs flash-attention packed-row logit parity (where
# flash-attn is installed) and KAITO's default baseline beside it. hack/gpu_check.py says how each is
# measured. Until a GPU has run it, benchmarks/RESULTS.md says these figures were never measured.
#
# The GPU machine has no network; its Python (python3: 3.12, torch 2.11 + CUDA 13.0) already has torch,
# transformers (5.17), peft, accelerate, pandas and pyarrow. Everything else comes from wheels kept next to
# this script in hack/gpu-wheels/ (git-ignored: fetch writes a .gitignore there; never commit wheels), at
# most 64 MiB in all, fetched beforehand by `fetch` on a machine with network. Sizes (Python 3.12,
# manylinux x86_64, as pip downloaded them):
#
#   wheel                                                       bytes          MiB
#   bitsandbytes 0.50.2 as published (CUDA 11.8-13.2, ROCm, XPU) 43,139,553    41.1
#     slimmed by fetch to its CPU + CUDA 13.0 libraries           3,593,119     3.4
#   transformers 5.24.0 (the project's pin; the image has 5.17)  13,549,890    12.9
#   trl 1.16.0                                                       948,205     0.9
#   peft 0.21.2 (the project's pin)                                  835,427     0.8
#   datasets 5.2.0                                                   608,276     0.6
#   multiprocess 0.70.19 (py312), dill 0.4.1                         270,300     0.3
#   total as published                                           59,351,651    56.6
#   total as fetch leaves it                                     19,805,217    18.9
#
# Not carried: pyarrow 26.0.1 (55.0 MB, 52.5 MiB) and pandas 3.1.1 (12.4 MB, 11.8 MiB), which the image
# has; kubernetes 37.0.2 (7.5 MB, plus pydantic, oauthlib, websocket-client, ...), which trainer.train
# imports at module level for the Workspace status sink only: hack/gpu_check.py stubs it where missing.
# With them the set would be about 130 MiB, twice the budget. The working tree travels too (~2 MiB).
# datasets 5.2.0 needs pyarrow >= 24: if the image's is older, the check stops at its first step naming it,
# and carrying pyarrow (52.5 MiB) beside the rest (18.9 MiB) would be over the budget.
#
# Usage:
#   hack/gpu-check.sh fetch [--python 3.12] [--cuda 130]   here, with network: download, slim, check size
#   hack/gpu-check.sh [run]                                 on the GPU: install the wheels, run the check
#   hack/gpu-check.sh --dry-run                             what run would install; fails where run would
#   hack/gpu-check.sh --cpu-smoke                           here: the check's steps, tiny shape, on the CPU
# With this workplace's device tool: carry hack/gpu-wheels, command `hack/gpu-check.sh run`, timeout 600.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="$ROOT/hack/gpu-wheels"
BUDGET_BYTES=$((64 * 1024 * 1024))
SITE="${GPU_CHECK_SITE:-/tmp/gpu-check-site}"
# The check's wheels: the project's pins (pyproject.toml's train extras) and datasets' own needs.
PINNED=(trl bitsandbytes datasets transformers peft)
EXTRA=("dill==0.4.1" "multiprocess==0.70.19")

die() {
	echo "gpu-check: $*" >&2
	exit 2
}

pins() { # name==version of each PINNED package, read from pyproject.toml
	local name line
	for name in "${PINNED[@]}"; do
		line="$(grep -oE "\"${name}==[^\"]+\"" "$ROOT/pyproject.toml" | head -1 | tr -d '"')"
		[[ -n "$line" ]] || die "no ${name}==VERSION pin in pyproject.toml"
		echo "$line"
	done
	printf '%s\n' "${EXTRA[@]}"
}

total_bytes() {
	local sum=0 f
	for f in "$WHEELS"/*.whl; do
		[[ -e "$f" ]] || continue
		sum=$((sum + $(stat -c %s "$f")))
	done
	echo "$sum"
}

sizes() {
	local f
	for f in "$WHEELS"/*.whl; do
		[[ -e "$f" ]] || continue
		printf '  %12s  %s\n' "$(stat -c %s "$f")" "$(basename "$f")"
	done
	printf '  %12s  total (budget %s)\n' "$(total_bytes)" "$BUDGET_BYTES"
}

check_wheels() { # the wheels are there, one per package, for this Python, and within the budget
	local py="$1" name tag missing=()
	[[ -d "$WHEELS" ]] || die "no $WHEELS: run 'hack/gpu-check.sh fetch' on a machine with network first"
	tag="$("$py" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
	while read -r pin; do
		name="${pin%%==*}"
		if ! compgen -G "$WHEELS/${name//-/_}-${pin#*==}-*.whl" >/dev/null; then
			missing+=("$pin")
		fi
	done < <(pins)
	[[ ${#missing[@]} -eq 0 ]] || die "missing wheels in $WHEELS: ${missing[*]} (run fetch again)"
	if ! compgen -G "$WHEELS/multiprocess-*-py${tag}-*.whl" >/dev/null; then
		die "the wheels are not for this Python ($tag): fetch again with --python $("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
	fi
	local total
	total="$(total_bytes)"
	if ((total > BUDGET_BYTES)); then
		sizes >&2
		die "$WHEELS holds $total bytes of wheels, over the 64 MiB budget ($BUDGET_BYTES)"
	fi
}

fetch() {
	local python_version="3.12" cuda="130"
	while (($#)); do
		case "$1" in
		--python) python_version="$2" && shift 2 ;;
		--cuda) cuda="$2" && shift 2 ;;
		*) die "fetch: unknown option $1" ;;
		esac
	done
	local pip=("${PIP:-$ROOT/.venv/bin/pip}")
	[[ -x "${pip[0]}" ]] || pip=(python3 -m pip)
	rm -rf "$WHEELS"
	mkdir -p "$WHEELS"
	printf '*\n' >"$WHEELS/.gitignore"
	local abi="cp${python_version/./}"
	mapfile -t wanted < <(pins)
	"${pip[@]}" download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
		--implementation cp --abi "$abi" --abi abi3 --abi none \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
		-d "$WHEELS" "${wanted[@]}"
	echo "as published:"
	sizes
	slim_bitsandbytes "$cuda"
	echo "bitsandbytes slimmed to its CPU and CUDA ${cuda} libraries:"
	sizes
	local total
	total="$(total_bytes)"
	((total <= BUDGET_BYTES)) || die "the wheels total $total bytes, over the 64 MiB budget"
	echo "ok: $total bytes in $WHEELS (git-ignored); on the GPU: hack/gpu-check.sh run"
}

slim_bitsandbytes() { # rewrite the bitsandbytes wheel without the libraries the GPU's torch does not load
	local cuda="$1" py=python3
	[[ -x "$ROOT/.venv/bin/python" ]] && py="$ROOT/.venv/bin/python"
	"$py" - "$WHEELS" "$cuda" <<'EOF'
import re, sys, zipfile
from pathlib import Path

folder, cuda = Path(sys.argv[1]), sys.argv[2]
(wheel,) = folder.glob("bitsandbytes-*.whl")
keep = {"libbitsandbytes_cpu.so", f"libbitsandbytes_cuda{cuda}.so"}
if not any(n.endswith(f"libbitsandbytes_cuda{cuda}.so") for n in zipfile.ZipFile(wheel).namelist()):
    sys.exit(f"bitsandbytes has no libbitsandbytes_cuda{cuda}.so: pick another --cuda")
drop = lambda name: re.search(r"/libbitsandbytes_[^/]+\.so$", name) and name.rsplit("/", 1)[1] not in keep
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if drop(item.filename):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines()
            data = ("\n".join(l for l in lines if not drop(l.split(",", 1)[0])) + "\n").encode()
        dst.writestr(item, data)
slim.replace(wheel)
EOF
}

install() {
	local py="$1"
	check_wheels "$py"
	rm -rf "$SITE"
	"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target "$SITE" "$WHEELS"/*.whl
}

main() {
	local py="${PYTHON:-python3}"
	case "${1:-run}" in
	fetch)
		shift
		fetch "$@"
		;;
	run)
		install "$py"
		cd "$ROOT"
		PYTHONPATH="$SITE:$ROOT" PYTHONUNBUFFERED=1 timeout 570 "$py" hack/gpu_check.py --budget-s 500
		;;
	--dry-run)
		check_wheels "$py"
		echo "would install into $SITE:"
		sizes
		echo "then run: PYTHONPATH=$SITE:$ROOT timeout 570 $py hack/gpu_check.py --budget-s 500"
		"$py" -m py_compile "$ROOT/hack/gpu_check.py" "$ROOT/benchmarks/trainer_throughput.py"
		;;
	--cpu-smoke)
		[[ -x "$ROOT/.venv/bin/python" ]] && py="$ROOT/.venv/bin/python"
		cd "$ROOT"
		PYTHONUNBUFFERED=1 timeout 300 "$py" hack/gpu_check.py --cpu-smoke
		;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
	*) die "unknown command ${1} (fetch, run, --dry-run, --cpu-smoke)" ;;
	esac
}

main "$@"
