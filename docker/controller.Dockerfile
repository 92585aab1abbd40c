# The operator: kopf + the Kubernetes client, no torch. Build from the repository root:
#   docker build -f docker/controller.Dockerfile -t kaito-tune/controller:0.1.0 .
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
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "tuning_controller.operator"]
