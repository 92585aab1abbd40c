"""Tiny LoRA adapters trained here in seconds on the tiny preset, saved in PEFT's format."""

from __future__ import annotations

from pathlib import Path

TRAIN_TEXT = (
    "<|user|>\nwhat is the code word?<|end|>\n<|assistant|>\nthe code word is orange river garden<|end|>\n"
)


def train_adapter(
    preset: Path, dest: Path, *, steps: int = 30, lr: float = 3e-3, rank: int = 8, seed: int = 0
) -> Path:
    """Fit a LoRA adapter to one chat turn (enough steps to change greedy answers); save it to ``dest``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(preset)
    model = AutoModelForCausalLM.from_pretrained(preset, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear")
    model = get_peft_model(model, config)
    batch = tokenizer(TRAIN_TEXT, return_tensors="pt", add_special_tokens=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(dest)
    return Path(dest)
