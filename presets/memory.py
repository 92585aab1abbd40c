"""Peak GPU memory of LoRA / QLoRA fine-tuning, per GPU, from a preset's dimensions (no model download).

Used up front by validation (does the job fit the instance type?) and by the trainer (the largest
micro-batch that fits when none is set). All sizes in bytes, reported in GiB. Notation: P parameters,
Q the decoder layers' linear parameters (``ModelPreset.layer_linear_parameters``), L layers, h hidden
size, i intermediate size, kv·d the key/value width, V vocabulary, b micro-batch, s sequence length,
T = b·s tokens per micro-step, w the bytes of the compute dtype (2 for bf16/fp16, 4 for fp32).

    weights     lora:  P·w
                qlora: Q·(0.5 + c) + (P − Q)·w        4-bit NF4; c = 1/64 + 4/(64·256) bytes of block
                                                      constants with double quantisation (4/64 without)
                8-bit: Q·1 + (P − Q)·w
                divided by the GPUs when the model is split across them (device_map="auto", KAITO's default)
    adapter     N·(4 + 4 + o)                          N = r·L·Σ(in+out) over target modules; fp32 weight
                                                      and gradient (PEFT keeps adapters in fp32) plus o
                                                      optimizer bytes (AdamW 8, 8-bit AdamW 2, SGD 0)
    activations per layer and token a = w·(6h + 2·kv·d + 4i): norm inputs and outputs, q/k/v, the
                attention output, and the gated MLP's gate, up, activation and product (flash/SDPA
                attention stores no s×s matrix; dropout 0 stores no masks)
    logits      G = T·V·(w + 8)                        the logits, their fp32 copy for the loss and its
                                                      fp32 log-softmax (transformers' default loss)
                G = T·V·(w + 4/8)                      loss_in_chunks: chunked cross-entropy (torchtune's,
                                                      8 chunks upcast one at a time)
    activations checkpointing off: L·T·a + G          everything is held until the loss is computed
    and logits  checkpointing on:  L·T·h·w + max(T·a, G)
                                                      each layer's input is kept; the loss's tensors are
                                                      freed before the first layer is recomputed, so the
                                                      peak is the larger of the two
    overhead    0.5 GiB                                CUDA context and cuBLAS workspace: real on the GPU
                                                      but outside PyTorch's allocator statistics

Checked against torchtune's published Llama-3.1-8B peaks (1x RTX 4090, batch 2, packed sequence 2048,
activation checkpointing, chunked loss): QLoRA 7.4 GiB and LoRA 16.2 GiB. Those are PyTorch allocator
peaks, so the test compares ``allocator_peak_gib`` (the total without the CUDA overhead); the estimate is
within ±15% of both (tests/presets/test_memory.py) and errs high, since a fit check that is too
optimistic costs a failed GPU job while one that is too cautious only suggests a larger SKU.
"""

from __future__ import annotations

from dataclasses import dataclass

from presets.catalog import ModelPreset

GIB = 1024**3
OVERHEAD_BYTES = GIB // 2
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# Optimizer state bytes per trainable parameter, by TrainingArguments.optim family.
OPTIMIZER_BYTES = {"adamw": 8, "adamw_8bit": 2, "sgd": 0, "adafactor": 4}
NF4_CONSTANTS = {True: 1 / 64 + 4 / (64 * 256), False: 4 / 64}
LOSS_CHUNKS = 8
MAX_MICRO_BATCH = 1024


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory per GPU, with the terms that make it up (GiB)."""

    weights_gib: float
    adapter_gib: float
    activations_gib: float
    logits_gib: float
    overhead_gib: float

    @property
    def allocator_peak_gib(self) -> float:
        """What PyTorch's allocator would report as peak (torch.cuda.max_memory_allocated)."""
        return self.weights_gib + self.adapter_gib + self.activations_gib + self.logits_gib

    @property
    def total_gib(self) -> float:
        return self.allocator_peak_gib + self.overhead_gib

    def breakdown(self) -> dict[str, float]:
        return {
            "weights": round(self.weights_gib, 2),
            "lora_params_grads_optimizer": round(self.adapter_gib, 2),
            "activations": round(self.activations_gib, 2),
            "logits": round(self.logits_gib, 2),
            "overhead": round(self.overhead_gib, 2),
            "total": round(self.total_gib, 2),
        }


def optimizer_family(optim: str) -> str:
    """Map a TrainingArguments ``optim`` (adamw_torch, paged_adamw_8bit, ...) to its state-size family."""
    name = optim.lower()
    if "8bit" in name:
        return "adamw_8bit"
    if "adafactor" in name:
        return "adafactor"
    if name.startswith("sgd"):
        return "sgd"
    return "adamw"


def weight_bytes(
    preset: ModelPreset, method: str, dtype: str, *, load_in_8bit: bool, double_quant: bool
) -> float:
    w = DTYPE_BYTES[dtype]
    if method == "lora":
        return preset.parameters * w
    q = preset.layer_linear_parameters
    per_quantised = 1.0 if load_in_8bit else 0.5 + NF4_CONSTANTS[double_quant]
    return q * per_quantised + (preset.parameters - q) * w


def estimate(
    preset: ModelPreset,
    method: str,
    *,
    micro_batch: int,
    seq_len: int,
    gradient_checkpointing: bool,
    lora_r: int = 8,
    target_modules: tuple[str, ...] | None = None,
    dtype: str = "bfloat16",
    optimizer: str = "adamw",
    gpus: int = 1,
    load_in_8bit: bool = False,
    double_quant: bool = True,
    loss_in_chunks: bool = False,
) -> MemoryEstimate:
    """Peak memory per GPU of tuning ``preset`` with ``method`` (lora|qlora); see the module docstring."""
    if method not in ("lora", "qlora"):
        raise ValueError(f"method must be lora or qlora, got {method!r}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    if micro_batch < 1 or seq_len < 1 or gpus < 1 or lora_r < 1:
        raise ValueError("micro_batch, seq_len, gpus and lora_r must be positive")
    w = DTYPE_BYTES[dtype]
    weights = weight_bytes(preset, method, dtype, load_in_8bit=load_in_8bit, double_quant=double_quant) / gpus
    trainable = preset.lora_parameters(lora_r, target_modules)
    adapter = trainable * (4 + 4 + OPTIMIZER_BYTES[optimizer_family(optimizer)])

    h, i, layers = preset.hidden_size, preset.intermediate_size, preset.num_hidden_layers
    kv_width = preset.num_key_value_heads * preset.head_dim
    tokens = micro_batch * seq_len
    per_layer_token = w * (6 * h + 2 * kv_width + 4 * i)
    logits = tokens * preset.vocab_size * (w + (4 / LOSS_CHUNKS if loss_in_chunks else 8))
    if gradient_checkpointing:
        # Layer inputs are kept; the loss's tensors and the recomputed layer never coexist.
        stored = layers * tokens * h * w
        recomputed = tokens * per_layer_token
        activations = stored + (recomputed if recomputed > logits else 0.0)
        logits = logits if logits >= recomputed else 0.0
    else:
        activations = layers * tokens * per_layer_token
    return MemoryEstimate(
        weights_gib=weights / GIB,
        adapter_gib=adapter / GIB,
        activations_gib=activations / GIB,
        logits_gib=logits / GIB,
        overhead_gib=OVERHEAD_BYTES / GIB,
    )


def largest_micro_batch(
    preset: ModelPreset,
    method: str,
    gpu_memory_gib: float,
    seq_len: int,
    gradient_checkpointing: bool,
    **options,
) -> int:
    """The largest micro-batch whose estimate fits in ``gpu_memory_gib``; 0 when not even one row fits.

    ``options`` are passed to :func:`estimate` (lora_r, dtype, optimizer, gpus, ...). Memory grows
    linearly in the batch, so a binary search over [1, MAX_MICRO_BATCH] finds the boundary exactly.
    """

    def fits(batch: int) -> bool:
        found = estimate(
            preset,
            method,
            micro_batch=batch,
            seq_len=seq_len,
            gradient_checkpointing=gradient_checkpointing,
            **options,
        )
        return found.total_gib <= gpu_memory_gib

    if not fits(1):
        return 0
    low, high = 1, MAX_MICRO_BATCH
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low
