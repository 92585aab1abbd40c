# The GPU runtime for the train container and the inference server: torch (its wheels bring the CUDA
# runtime libraries; the node's NVIDIA driver is mounted by the container toolkit), transformers, peft,
# trl, bitsandbytes, the trainer and the server, all at the pins of pyproject.toml's `train` extra.
# Build from the repository root:
#   docker build -f docker/runtime.Dockerfile -t kaito-tune/runtime:0.1.0 .
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=/tmp/hf
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tuning_controller ./tuning_controller
COPY presets ./presets
COPY artifacts ./artifacts
COPY trainer ./trainer
COPY inference ./inference
RUN pip install ".[train]"
USER 1000:1000
# The tuning Job runs `python -m trainer.qlora`; inference Workspaces run `python -m inference`.
CMD ["python", "-m", "trainer.qlora", "--help"]
