"""Peak GPU memory of LoRA / QLoRA fine-tuning, per GPU, from a preset's dimensions (no model download).

Used up front by validation (does the job fit the instance type?) and by the trainer (the largest
micro-batch that fits when none is set). All sizes in bytes, reported in GiB. Notation: P parameters,
Q the decoder layers' linear parameters (``ModelPreset.layer_linear_parameters``), L layers, h hidden
size, i intermediate size, kv·d the key/value width, V vocabulary, b micro-batch, s sequence length,
T = b·s tokens per micro-step, w the bytes of the compute dtype (2 for bf16/fp16, 4 for fp32).

What a step holds depends on the training loop as well as on the model, so ``trainer`` names it:
``trl`` (the default) is what the runtime runs: TRL 1.16's SFTTrainer on a model that trainer/model.py
loads and, for QLoRA/8-bit, passes through peft's ``prepare_model_for_kbit_training``; ``transformers``
is the same preparation with transformers' own loss (``model(labels=...)``, a plain Trainer or loop);
``torchtune`` is torchtune's LoRA recipe, which the published figures below were measured with.
u is the bytes of a k-bit model's unquantised parameters and f those of its residual stream: 4 under
trl/transformers (see "weights"), w under torchtune and for LoRA.

    weights     lora:  P·w
                qlora: Q·(0.5 + c) + (P − Q)·u        4-bit NF4; c = 1/64 + 4/(64·256) bytes of block
                                                      constants with double quantisation (4/64 without)
                8-bit: Q·1 + (P − Q)·u
                                                      u = 4: prepare_model_for_kbit_training casts every
                                                      fp16/bf16 parameter that is not a Params4bit
                                                      (embeddings, LM head, norms) to fp32 (peft
                                                      utils/other.py; int8 weights are not fp16/bf16)
                divided by the GPUs when the model is split across them (device_map="auto", KAITO's default)
    dequant     D = max(out·in)·w                      qlora/8-bit: bitsandbytes multiplies by the whole
                over the quantised linears            dequantised weight of the largest quantised layer
                (usually the MLP's, i·h)              (4-bit: MatMul4Bit.backward always, as
                                                      dequantize_4bit(B).to(grad_output.dtype), and the
                                                      forward past 1536 tokens, _dequant_linear_fallback;
                                                      8-bit: MatMul8bitLt.backward's CB copy, in the
                                                      input's dtype, so f bytes). The layers run one after
                                                      another and each buffer dies with its matmul, so one
                                                      exists at a time
    adapter     N·(p + p + o)                          N = r·L·Σ(in+out) over target modules; p the bytes of
                                                      an adapter weight and of its gradient: 4 (PEFT's
                                                      autocast_adapter_dtype upcasts adapters to fp32),
                                                      2 for qlora/8-bit under trl (SFTTrainer casts a
                                                      quantised model's trainable parameters to bf16),
                                                      w under torchtune (built in the model's dtype);
                                                      o optimizer bytes: torch AdamW 2p (exp_avg and
                                                      exp_avg_sq are zeros_like(param)), bitsandbytes'
                                                      32-bit AdamW 8, 8-bit AdamW 2, Adafactor 4, SGD 0
    activations per layer and token a = w·(6h + 2·kv·d + 4i) + (f − w)·3i: norm inputs and outputs,
                q/k/v, the attention output, and the gated MLP's gate, up, activation and product
                (flash/SDPA attention stores no s×s matrix; dropout 0 stores no masks). With f = 4 the
                fp32 embedding output keeps the residual stream in fp32, and a k-bit linear returns its
                output in its input's dtype (Linear4bit: ``.to(inp_dtype)``), so gate, up and the
                activation are fp32 too
    logits      trl:          G = t·v·w + T·h·(2f + 4) [+ v·h·w]
                                                      TRL's fused LM head (add_fused_lm_head) never builds
                                                      the T×V logits: one tile of t = min(T, 4096) tokens
                                                      by v = min(V, 32768) columns in the compute dtype,
                                                      the final hidden states it saves, their fp32
                                                      gradient accumulator and that gradient cast back;
                                                      [with u = 4, the fp32 head's column chunk cast to w]
                transformers: G = T·V·(w + 12) [+ V·h·w]
                                                      ForCausalLMLoss: the logits, then (logits.float())
                                                      the fp32 log-softmax the loss saves, and in the
                                                      backward its incoming fp32 gradient and the one it
                                                      returns, all live at once; [with u = 4, autocast's
                                                      w copy of the fp32 LM head, saved for the backward]
                torchtune:    G = T·V·(w + 4/8)       chunked cross-entropy (8 chunks upcast one at a time)
    activations checkpointing off: L·T·a + G          everything is held until the loss is computed
    and logits  checkpointing on:  L·T·h·f + max(T·a, G)
                                                      each layer's input is kept; the loss's tensors are
                                                      freed before the first layer is recomputed, so the
                                                      peak is the larger of the two
    overhead    0.5 GiB                                CUDA context and cuBLAS workspace: real on the GPU
                                                      but outside PyTorch's allocator statistics

The dequantisation buffer is added in full although it lives only while a layer runs: errs high.

Checked against torchtune's published Llama-3.1-8B peaks (1x RTX 4090, batch 2, packed sequence 2048,
activation checkpointing, chunked loss): QLoRA 7.4 GiB and LoRA 16.2 GiB. Those are PyTorch allocator
peaks, so the test compares ``allocator_peak_gib`` (the total without the CUDA overhead) with
``trainer="torchtune"``; the estimate is within ±15% of both (tests/presets/test_memory.py) and errs high,
since a fit check that is too optimistic costs a failed GPU job while one that is too cautious only
suggests a larger SKU. benchmarks/memory_estimator.py compares it with measured CPU peaks.
"""

from __future__ import annotations

from dataclasses import dataclass

from presets.catalog import ModelPreset

GIB = 1024**3
OVERHEAD_BYTES = GIB // 2
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
FP32 = 4
BF16 = 2
# Optimizer state bytes per trainable parameter, by TrainingArguments.optim family; None: two states of the
# parameter's own dtype (torch's Adam/AdamW allocate them with zeros_like(param)).
OPTIMIZER_BYTES: dict[str, int | None] = {
    "adamw": None,
    "adamw_32bit": 8,
    "adamw_8bit": 2,
    "sgd": 0,
    "adafactor": 4,
}
NF4_CONSTANTS = {True: 1 / 64 + 4 / (64 * 256), False: 4 / 64}
TRAINERS = ("trl", "transformers", "torchtune")
LOSS_CHUNKS = 8
# TRL's fused LM head: tokens per projection tile (trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE) and
# vocabulary columns per tile (trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE).
FUSED_HEAD_TOKENS = 4096
FUSED_HEAD_COLUMNS = 32768
MAX_MICRO_BATCH = 1024


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory per GPU, with the terms that make it up (GiB)."""

    weights_gib: float
    adapter_gib: float
    activations_gib: float
    logits_gib: float
    overhead_gib: float
    dequant_gib: float = 0.0

    @property
    def allocator_peak_gib(self) -> float:
        """What PyTorch's allocator would report as peak (torch.cuda.max_memory_allocated)."""
        return self.weights_gib + self.dequant_gib + self.adapter_gib + self.activations_gib + self.logits_gib

    @property
    def total_gib(self) -> float:
        return self.allocator_peak_gib + self.overhead_gib

    def breakdown(self) -> dict[str, float]:
        return {
            "weights": round(self.weights_gib, 2),
            "dequant_buffer": round(self.dequant_gib, 2),
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
    if "32bit" in name:
        return "adamw_32bit"
    if "adafactor" in name:
        return "adafactor"
    if name.startswith("sgd"):
        return "sgd"
    return "adamw"


def upcasts_unquantised(method: str, trainer: str) -> bool:
    """Whether the k-bit preparation keeps the unquantised parameters (and so the residual stream) in fp32."""
    return method == "qlora" and trainer != "torchtune"


def weight_bytes(
    preset: ModelPreset,
    method: str,
    dtype: str,
    *,
    load_in_8bit: bool,
    double_quant: bool,
    trainer: str = "trl",
) -> float:
    w = DTYPE_BYTES[dtype]
    if method == "lora":
        return preset.parameters * w
    q = preset.layer_linear_parameters
    per_quantised = 1.0 if load_in_8bit else 0.5 + NF4_CONSTANTS[double_quant]
    unquantised = max(w, FP32) if upcasts_unquantised(method, trainer) else w
    return q * per_quantised + (preset.parameters - q) * unquantised


def dequant_bytes(
    preset: ModelPreset, method: str, dtype: str, *, load_in_8bit: bool = False, trainer: str = "trl"
) -> float:
    """The largest quantised linear layer dequantised for its matmul (0 for LoRA).

    4-bit layers dequantise to the compute dtype (Linear4bit casts its input to it first); 8-bit ones to
    their input's dtype (MatMul8bitLt.backward: ``CB.to(ctx.dtype_A)``), fp32 in an upcast model.
    """
    if method != "qlora":
        return 0.0
    w = DTYPE_BYTES[dtype]
    if load_in_8bit and upcasts_unquantised(method, trainer):
        w = max(w, FP32)
    return max(a * b for a, b in preset.linear_shapes().values()) * w


def adapter_bytes(
    preset: ModelPreset,
    method: str,
    dtype: str,
    *,
    lora_r: int,
    target_modules: tuple[str, ...] | None,
    optimizer: str,
    trainer: str = "trl",
) -> float:
    """Adapter weights, their gradients and the optimizer's states."""
    if trainer == "torchtune":
        per_param = DTYPE_BYTES[dtype]
    elif trainer == "trl" and method == "qlora":
        per_param = BF16
    else:
        per_param = FP32
    states = OPTIMIZER_BYTES[optimizer_family(optimizer)]
    states = 2 * per_param if states is None else states
    return preset.lora_parameters(lora_r, target_modules) * (2 * per_param + states)


def logits_bytes(preset: ModelPreset, tokens: int, w: int, residual: int, trainer: str) -> float:
    """The loss's tensors (G in the module docstring)."""
    vocab, h = preset.vocab_size, preset.hidden_size
    upcast_head = residual == FP32 and w != FP32
    if trainer == "trl":
        columns = min(vocab, FUSED_HEAD_COLUMNS)
        tile = min(tokens, FUSED_HEAD_TOKENS) * columns * w
        head_cast = columns * h * w if upcast_head else 0
        return tile + tokens * h * (2 * residual + FP32) + head_cast
    if trainer == "transformers":
        return tokens * vocab * (w + 3 * FP32) + (vocab * h * w if upcast_head else 0)
    return tokens * vocab * (w + FP32 / LOSS_CHUNKS)


def _check(method: str, dtype: str, trainer: str, positive: tuple[int, ...]) -> None:
    if method not in ("lora", "qlora"):
        raise ValueError(f"method must be lora or qlora, got {method!r}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    if trainer not in TRAINERS:
        raise ValueError(f"trainer must be one of {TRAINERS}, got {trainer!r}")
    if min(positive) < 1:
        raise ValueError("micro_batch, seq_len, gpus and lora_r must be positive")


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
    trainer: str | None = None,
) -> MemoryEstimate:
    """Peak memory per GPU of tuning ``preset`` with ``method`` (lora|qlora); see the module docstring.

    ``trainer`` is trl (default), transformers or torchtune. ``loss_in_chunks=True``, from before
    ``trainer`` existed, means torchtune (its chunked loss is what the flag modelled).
    """
    if trainer is None:
        trainer = "torchtune" if loss_in_chunks else "trl"
    elif loss_in_chunks and trainer != "torchtune":
        raise ValueError(f"loss_in_chunks models torchtune's loss, not {trainer!r}'s")
    _check(method, dtype, trainer, (micro_batch, seq_len, gpus, lora_r))
    w = DTYPE_BYTES[dtype]
    residual = max(w, FP32) if upcasts_unquantised(method, trainer) else w
    quant = {"load_in_8bit": load_in_8bit, "double_quant": double_quant}
    weights = weight_bytes(preset, method, dtype, trainer=trainer, **quant) / gpus
    adapter = adapter_bytes(
        preset,
        method,
        dtype,
        lora_r=lora_r,
        target_modules=target_modules,
        optimizer=optimizer,
        trainer=trainer,
    )

    h, i, layers = preset.hidden_size, preset.intermediate_size, preset.num_hidden_layers
    kv_width = preset.num_key_value_heads * preset.head_dim
    tokens = micro_batch * seq_len
    per_layer_token = w * (6 * h + 2 * kv_width + 4 * i) + (residual - w) * 3 * i
    logits = logits_bytes(preset, tokens, w, residual, trainer)
    if gradient_checkpointing:
        # Layer inputs are kept; the loss's tensors and the recomputed layer never coexist.
        stored = layers * tokens * h * residual
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
        dequant_gib=dequant_bytes(preset, method, dtype, load_in_8bit=load_in_8bit, trainer=trainer) / GIB,
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

    ``options`` are passed to :func:`estimate` (lora_r, dtype, optimizer, gpus, trainer, ...). Memory never
    shrinks as the batch grows, so a binary search over [1, MAX_MICRO_BATCH] finds the boundary exactly.
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
