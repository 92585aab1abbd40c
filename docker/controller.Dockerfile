# The operator: kopf + the Kubernetes client, no torch. Build from the repository root:
#   docker build -f docker/controller.Dockerfile -t kaito-tune/controller:0.1.0 .
# hack/images.sh builds it with buildah on a Debian base made with mmdebstrap (build-arg BASE) and a
# wheelhouse mounted at /wheels, without network; with nothing at /wheels pip uses the package index.
ARG BASE=python:3.11.14-slim-bookworm
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# The pods' user (runAsUser/fsGroup 1000), with a writable home for the libraries' caches.
RUN groupadd --gid 1000 kaito && useradd --uid 1000 --gid 1000 --create-home --no-log-init kaito
# Dependencies first, from pyproject.toml alone: this big layer changes only when the pins do.
COPY pyproject.toml docker/requirements.py /tmp/deps/
RUN set -eu; python3 -m venv /opt/venv; \
    python /tmp/deps/requirements.py /tmp/deps/pyproject.toml >/tmp/deps/requirements.txt; \
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
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "tuning_controller.operator"]
