# fetch-data, push and pull for the tuning Job and the inference pull init containers: the `kaito-tune`
# CLI on the project's base dependencies only (no torch), running as non-root. Build from the repository root:
#   docker build -f docker/tools.Dockerfile -t kaito-tune/tools:0.1.0 .
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tuning_controller ./tuning_controller
COPY presets ./presets
COPY artifacts ./artifacts
COPY trainer ./trainer
COPY inference ./inference
RUN pip install .
USER 1000:1000
ENTRYPOINT ["kaito-tune"]
