"""The served model: base weights plus adapters combined by strength, and generation on one of them.

Served model ids (``GET /v1/models``, the request's ``model``):

- ``<preset>`` — the base model, adapters off;
- ``<adapter name>`` — that adapter alone, scaled by its Workspace strength (so one adapter at "0.5"
  answers the same whether it is picked by name or served as the default);
- ``<preset>+adapters`` — every adapter, each scaled by its strength and summed: the default, as KAITO's
  transformers runtime serves it. Without adapters the default is the base model.

Combination uses PEFT's ``add_weighted_adapter`` with ``combination_type="cat"``: the adapters' ranks
are stacked and each ``lora_A`` scaled by ``strength * scaling``, so the combined weight delta is exactly
``sum(strength_i * delta_i)`` — strength 0 is the base model and 0.5 half the adapter's delta. ("linear"
mixes the A and B matrices separately, which for several adapters adds cross terms, and PEFT silently
switches a single-adapter "cat" to "linear"; both agree for one adapter, so the result is the same.)

PEFT keeps adapters in ``nn.ModuleDict``s, where a key such as ``half``, ``to`` or ``float`` collides
with a module attribute; adapters therefore get internal names (``adapter0`` ...) and the Workspace
names stay in this module's maps.

Everything here is synchronous and not thread-safe (the active adapter is model state): the server
runs it on one worker thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from contract.pod import COMBINED_SUFFIX
from inference.adapters import Adapter

log = logging.getLogger(__name__)

_COMBINED = "combined"


class ModelLoadError(RuntimeError):
    """The base model or an adapter cannot be loaded; the message names it and what to check."""


@dataclass(frozen=True)
class SamplingParams:
    """What to generate: limits and sampling knobs in transformers' ``generate`` terms."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    min_new_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs["temperature"] = self.temperature
            kwargs["top_k"] = self.top_k if self.top_k is not None else 0
            kwargs["top_p"] = self.top_p if self.top_p is not None else 1.0
            if self.typical_p is not None:
                kwargs["typical_p"] = self.typical_p
        for name in ("repetition_penalty", "no_repeat_ngram_size", "min_new_tokens"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return kwargs

    def batches_with(self, other: SamplingParams) -> bool:
        """Greedy requests that differ at most in length can share one batched ``generate``: greedy
        decoding of a row does not depend on the other rows, and each row is cut to its own length."""
        plain = self.seed is None and not self.stop and not self.do_sample
        return plain and replace(self, max_new_tokens=0) == replace(other, max_new_tokens=0)


@dataclass(frozen=True)
class Generation:
    """One finished generation: the new text and OpenAI's usage and finish_reason."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"


@dataclass
class Engine:
    """Tokenizer plus model with every adapter loaded; ``generate`` serves any of ``model_ids``."""

    model: Any
    tokenizer: Any
    base_id: str
    adapters: list[Adapter] = field(default_factory=list)
    max_context: int = 2048
    chat_templates: dict[str, str] = field(default_factory=dict)  # model id -> an adapter's own template
    _internal: dict[str, str] = field(default_factory=dict)

    @property
    def combined_id(self) -> str:
        return self.base_id + COMBINED_SUFFIX

    @property
    def default_id(self) -> str:
        return self.combined_id if self.adapters else self.base_id

    @property
    def model_ids(self) -> list[str]:
        ids = [self.base_id, *(a.name for a in self.adapters)]
        return [*ids, self.combined_id] if self.adapters else ids

    @contextlib.contextmanager
    def selected(self, model_id: str) -> Iterator[Any]:
        """The model with ``model_id``'s adapters active (KeyError for an unknown id)."""
        if model_id not in self.model_ids:
            raise KeyError(model_id)
        if not self.adapters:
            yield self.model
        elif model_id == self.base_id:
            with self.model.disable_adapter():
                yield self.model
        else:
            self.model.set_adapter(self._internal[model_id])
            yield self.model

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_prompt(self, messages: list[dict[str, str]], model_id: str | None = None) -> str:
        """``model_id``'s chat template (an adapter's own, else the base model's) applied to ``messages``,
        ending with the assistant's turn marker."""
        template = self.chat_templates.get(model_id or self.default_id)
        return self.tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )

    def generate(
        self,
        model_id: str,
        prompt: str,
        params: SamplingParams,
        on_text: Callable[[str], object] | None = None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Generate from ``prompt`` (already templated); ``on_text`` receives text pieces as they decode."""
        import torch

        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        prompt_tokens = int(inputs["input_ids"].shape[1])
        kwargs = params.generate_kwargs()
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        streamer = _PieceStreamer(self.tokenizer, on_text, params.stop) if on_text else None
        if params.seed is not None:
            torch.manual_seed(params.seed)
        with self.selected(model_id) as model, torch.inference_mode():
            out = model.generate(
                **inputs,
                **kwargs,
                streamer=streamer,
                stopping_criteria=_stop_when(cancel.is_set if cancel is not None else lambda: False),
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_ids = out[0, prompt_tokens:].tolist()
        eos = _eos_ids(self.tokenizer, model.generation_config)
        ended = bool(new_ids) and new_ids[-1] in eos
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        text, stopped = trim_at_stop(text, params.stop)
        finish = "stop" if ended or stopped or len(new_ids) < params.max_new_tokens else "length"
        if streamer is not None:
            streamer.finish()
        return Generation(text, prompt_tokens, len(new_ids), finish)

    def generate_batch(
        self,
        model_id: str,
        prompts: list[str],
        params: list[SamplingParams],
        cancelled: Callable[[], bool] = lambda: False,
    ) -> list[Generation]:
        """Greedy generation for several prompts in one left-padded batch (``batches_with`` holds for
        all ``params``); each row ends at its first end-of-sequence token or its own max_new_tokens."""
        import torch

        inputs = self.tokenizer(
            prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        )
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        width = int(inputs["input_ids"].shape[1])
        kwargs = replace(params[0], max_new_tokens=max(p.max_new_tokens for p in params)).generate_kwargs()
        with self.selected(model_id) as model, torch.inference_mode():
            out = model.generate(
                **inputs,
                **kwargs,
                stopping_criteria=_stop_when(cancelled),
                pad_token_id=self.tokenizer.pad_token_id,
            )
        eos = _eos_ids(self.tokenizer, model.generation_config)
        results = []
        for row, p in enumerate(params):
            new_ids = out[row, width:].tolist()
            end = next((i for i, t in enumerate(new_ids) if t in eos), None)
            ended = end is not None and end < p.max_new_tokens
            new_ids = new_ids[: end + 1] if end is not None and ended else new_ids[: p.max_new_tokens]
            text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
            finish = "stop" if ended or len(new_ids) < p.max_new_tokens else "length"
            prompt_tokens = int(inputs["attention_mask"][row].sum())
            results.append(Generation(text, prompt_tokens, len(new_ids), finish))
        return results


def _stop_when(cancelled: Callable[[], bool]):
    """A stopping criterion that ends generation once ``cancelled()`` (the client went away)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stop = cancelled()
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Cancelled()])


def _eos_ids(tokenizer: Any, generation_config: Any) -> set[int]:
    ids = generation_config.eos_token_id if generation_config is not None else None
    ids = ids if isinstance(ids, list) else [ids]
    return {i for i in [*ids, tokenizer.eos_token_id] if i is not None}


def trim_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` cut before the first stop string it contains, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class _PieceStreamer:
    """A transformers streamer that decodes incrementally and hands out text pieces.

    Text that could still turn into a stop string is held back until it cannot, so a streamed answer
    never shows a stop string the final answer leaves out.
    """

    def __init__(self, tokenizer: Any, on_text: Callable[[str], object], stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.stop = tuple(s for s in stop if s)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0
        self.skip_prompt = True
        self.done = False

    def put(self, value: Any) -> None:
        if self.skip_prompt:  # generate() first passes the prompt
            self.skip_prompt = False
            return
        self.ids.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        self._emit(text, final=False)

    def end(self) -> None:
        """Called by generate(); the final flush waits for ``finish`` (after stop trimming)."""

    def finish(self) -> None:
        self._emit(self.tokenizer.decode(self.ids, skip_special_tokens=True), final=True)

    def _emit(self, text: str, final: bool) -> None:
        if self.done:
            return
        text, stopped = trim_at_stop(text, self.stop)
        limit = len(text) if final or stopped else max(self.sent, len(text) - self.hold)
        if limit > self.sent:
            self.on_text(text[self.sent : limit])
            self.sent = limit
        self.done = stopped or final


def _dtype(name: str, on_gpu: bool):
    import torch

    if name == "auto":
        if on_gpu:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def load_engine(
    preset: str,
    adapters: list[Adapter],
    *,
    dtype: str = "auto",
    local_files_only: bool = True,
    weights: Path | None = None,
) -> Engine:
    """Load the preset (catalog name, ``tiny-llama`` or a model directory; from ``weights`` when given)
    and every adapter.

    Each adapter is loaded under an internal name, then re-added scaled by its strength (one ``cat``
    combination per adapter and one of all adapters); the unscaled copies are dropped.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from presets.resolve import PresetNotFound, resolve_preset

    try:
        resolved = resolve_preset(preset, weights)
    except PresetNotFound as exc:
        raise ModelLoadError(f"--preset {preset!r}: {exc}") from exc
    on_gpu = torch.cuda.is_available()
    kwargs = {"revision": resolved.revision, "local_files_only": local_files_only}
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            resolved.source, dtype=_dtype(dtype, on_gpu), device_map="auto" if on_gpu else None, **kwargs
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"base model {resolved.source}@{resolved.revision} cannot be loaded ({exc}); pass the "
            "directory fetch-model filled as --weights, or a local model directory as --preset"
        ) from exc
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base_id = preset if not Path(preset).is_dir() else resolved.name
    max_context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    engine = Engine(model, tokenizer, base_id, list(adapters), max_context)
    engine.chat_templates = adapter_chat_templates(adapters, engine.combined_id)
    if adapters:
        engine.model, engine._internal = _with_adapters(model, adapters, engine.combined_id)
        engine.model.eval()
    log.info("serving %s on %s", engine.model_ids, model.device)
    return engine


def adapter_chat_template(directory: Path) -> str | None:
    """The chat template an adapter was trained with, when training changed it (ModelConfig.chat_template
    makes the trainer save the tokenizer next to the adapter)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = directory / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def adapter_chat_templates(adapters: list[Adapter], combined_id: str) -> dict[str, str]:
    """Model id -> template for adapters that carry one; the combination uses it when all agree."""
    found = {a.name: t for a in adapters if (t := adapter_chat_template(a.path)) is not None}
    if found and len(found) == len(adapters) and len(set(found.values())) == 1:
        return {**found, combined_id: next(iter(found.values()))}
    if found:
        log.warning(
            "adapters %s carry their own chat templates, the others do not or differ: %s uses the base "
            "model's template",
            sorted(found),
            combined_id,
        )
    return found


def _with_adapters(model: Any, adapters: list[Adapter], combined_id: str) -> tuple[Any, dict[str, str]]:
    from peft import PeftModel

    raw = [f"raw{i}" for i in range(len(adapters))]
    peft_model = None
    for adapter, internal in zip(adapters, raw, strict=True):
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, str(adapter.path), adapter_name=internal)
            else:
                peft_model.load_adapter(str(adapter.path), adapter_name=internal)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(
                f"adapter {adapter.name!r} in {adapter.path} does not fit this base model ({exc}); "
                "was it trained on the same preset?"
            ) from exc
    assert peft_model is not None
    served: dict[str, str] = {}
    for i, (adapter, name) in enumerate(zip(adapters, raw, strict=True)):
        served[adapter.name] = f"adapter{i}"
        peft_model.add_weighted_adapter([name], [adapter.strength], f"adapter{i}", combination_type="cat")
    peft_model.add_weighted_adapter(raw, [a.strength for a in adapters], _COMBINED, combination_type="cat")
    served[combined_id] = _COMBINED
    peft_model.set_adapter(_COMBINED)
    for name in raw:
        peft_model.delete_adapter(name)
    return peft_model, served
