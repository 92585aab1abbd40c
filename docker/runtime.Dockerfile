# The GPU runtime for the train container and the inference server: torch (its wheels bring the CUDA
# runtime libraries; the node's NVIDIA driver is mounted by the container toolkit), transformers, peft,
# trl, bitsandbytes, the trainer and the server, all at the pins of pyproject.toml's `train` extra.
# Build from the repository root:
#   docker build -f docker/runtime.Dockerfile -t kaito-tune/runtime:0.1.0 .
# hack/images.sh builds it with buildah on a Debian base made with mmdebstrap (build-arg BASE) and a
# wheelhouse mounted at /wheels, without network; with nothing at /wheels pip uses the package index.
ARG BASE=python:3.11.14-slim-bookworm
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=/tmp/hf \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# The pods' user (runAsUser/fsGroup 1000), with a writable home for the libraries' caches.
RUN groupadd --gid 1000 kaito && useradd --uid 1000 --gid 1000 --create-home --no-log-init kaito
# Dependencies first, from pyproject.toml alone: this big layer changes only when the pins do.
COPY pyproject.toml docker/requirements.py /tmp/deps/
RUN set -eu; python3 -m venv /opt/venv; \
    python /tmp/deps/requirements.py /tmp/deps/pyproject.toml train >/tmp/deps/requirements.txt; \
    if [ -n "$(ls -A /wheels 2>/dev/null)" ]; then set -- --no-index --find-links /wheels; fi; \
    pip install "$@" -r /tmp/deps/requirements.txt; \
    rm -rf /tmp/deps
# Then the project itself, a small top layer (its dependencies are already in the venv).
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY tuning_controller ./tuning_controller
COPY presets ./presets
COPY artifacts ./artifacts
COPY trainer ./trainer
COPY inference ./inference
RUN pip install --no-index --no-deps --no-build-isolation . && rm -rf build ./*.egg-info
USER 1000:1000
# The tuning Job runs `python -m trainer.qlora` (or torchrun); inference Workspaces run `python -m inference`.
CMD ["python", "-m", "trainer.qlora", "--help"]
