"""Pre-flight: every row rendered and tokenized before a model loads, so bad data fails on a CPU, not a GPU.

``prepare`` returns the tokenized train/eval examples and a JSON-able report: counts, the bad rows with
their index in the concatenated input and the reason, the token-length histogram, the truncation rate
against ``max_length`` and the data's sha256. The ``preflight`` step prints that report and stops.

Loss masks are TRL's (``tests/trainer/test_trl_parity.py``): a chat template's ``{% generation %}`` marks
where it has them; where it has none (TRL then knows a training variant of a few templates only), the
conversation is rendered turn by turn and the characters an assistant turn adds are the ones trained on.
"""

from __future__ import annotations

import random
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from contract.eval_files import held_out_names, names_listing, unmatched_patterns
from trainer.config import CollatorOptions, DatasetOptions
from trainer.data import BadRow, DataFile, Example, column_mapping, combined_sha256, to_example

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100
GENERATION_MARK = re.compile(r"\{%-?\s*generation\s*-?%\}")
HISTOGRAM_EDGES = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True)
class Encoded:
    """A tokenized example: ``labels`` is ``IGNORE`` where no loss is taken (always at position 0)."""

    index: int
    input_ids: list[int]
    labels: list[int]
    full_length: int  # before truncation


@dataclass
class Prepared:
    train: list[Encoded]
    eval: list[Encoded]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.report["errors"]

    @property
    def sha256(self) -> str:
        """The data's identity (``trainer.data.combined_sha256``), computed once, when it was read."""
        return str(self.report["sha256"])


def _char_spans(
    tokenizer: PreTrainedTokenizerBase, example: Example, train_all: bool
) -> tuple[str, list[tuple[int, int]]]:
    """The text to tokenize and the character spans that carry loss."""
    eos = str(tokenizer.eos_token or "")
    if example.text is not None:
        text = example.text + eos
        return text, [(0, len(text))]
    if example.prompt is not None:
        text = example.prompt + (example.completion or "") + eos
        return text, [(0 if train_all else len(example.prompt), len(text))]
    messages = example.messages or []
    full = str(tokenizer.apply_chat_template(messages, tokenize=False))
    if train_all:
        return full, [(0, len(full))]
    spans = []
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        start = str(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        end = str(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
        if not (full.startswith(end) and end.startswith(start)):
            raise BadRow("the chat template does not render this conversation turn by turn")
        spans.append((len(start), len(end)))
    return full, spans


def _marked_assistant_tokens(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> tuple[list[int], list[int]]:
    """Token ids and labels from a template's ``{% generation %}`` marks, as TRL computes them."""
    out: Any = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(out["input_ids"])
    return ids, [tok if mask else IGNORE for tok, mask in zip(ids, out["assistant_masks"], strict=True)]


def encode(
    index: int,
    example: Example,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    collator: CollatorOptions,
    truncation: str | None = "keep_start",
) -> Encoded:
    """Tokenize one example and build its labels; raises BadRow when nothing would be learned.

    ``truncation`` is TRL's ``truncation_mode`` (keep the first or the last ``max_length`` tokens), or None
    where packing splits long examples itself (``bfd_split``, ``wrapped``)."""
    train_all = (
        not collator.assistant_only_loss
        if example.messages is not None
        else not collator.completion_only_loss
    )
    if (
        example.messages is not None
        and not train_all
        and GENERATION_MARK.search(str(tokenizer.chat_template))
    ):
        ids, labels = _marked_assistant_tokens(tokenizer, example.messages)
    else:
        text, spans = _char_spans(tokenizer, example, train_all)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [
            tok if any(a <= start < b for a, b in spans) else IGNORE
            for tok, (start, _end) in zip(ids, enc["offset_mapping"], strict=True)
        ]
    if labels:
        labels[0] = IGNORE  # nothing precedes the first token; also keeps packed sequences apart
    full_length = len(ids)
    if truncation is not None and full_length > max_length:
        kept = slice(None, max_length) if truncation == "keep_start" else slice(-max_length, None)
        ids, labels = ids[kept], labels[kept]
        labels[0] = IGNORE
    if all(label == IGNORE for label in labels):
        if full_length > max_length:
            raise BadRow(
                f"{full_length} tokens > max_length {max_length}: nothing to learn is left after truncation",
                too_long=True,
            )
        raise BadRow("no tokens to learn from after rendering (empty answer?)")
    return Encoded(index, ids, labels, full_length)


def _length_stats(lengths: list[int], max_length: int) -> dict[str, Any]:
    if not lengths:
        return {"rows": 0}
    ordered = sorted(lengths)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    histogram: list[dict[str, Any]] = []
    low: float = 0
    for edge in (*HISTOGRAM_EDGES, float("inf")):
        count = sum(1 for n in ordered if low < n <= edge)
        if count:
            histogram.append({"le": edge if edge != float("inf") else None, "rows": count})
        low = edge
    truncated = sum(1 for n in ordered if n > max_length)
    return {
        "rows": len(ordered),
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 1),
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "max": ordered[-1],
        "total": sum(ordered),
        "truncated_rows": truncated,
        "truncation_rate": round(truncated / len(ordered), 4),
        "histogram": histogram,
    }


def _split(
    encoded: list[Encoded], options: DatasetOptions, held_out: Sequence[DataFile] = ()
) -> tuple[list[Encoded], list[Encoded]]:
    """Training and held-out rows: the rows of the ``held_out`` files whole and in file order where
    DatasetConfig.eval_files names some (a fixed set, comparable across runs), else a shuffled share."""
    if held_out:
        spans = [range(f.first_row, f.first_row + f.rows) for f in held_out]
        train: list[Encoded] = []
        held: list[Encoded] = []
        for e in encoded:
            (held if any(e.index in span for span in spans) else train).append(e)
        if options.shuffle_dataset:
            random.Random(options.shuffle_seed).shuffle(train)
        return train, held
    rows = list(encoded)
    if options.shuffle_dataset:
        random.Random(options.shuffle_seed).shuffle(rows)
    if float(options.train_test_split) >= 1 or len(rows) < 2:
        return rows, []
    n_train = min(len(rows) - 1, max(1, round(len(rows) * float(options.train_test_split))))
    return rows[:n_train], rows[n_train:]


def _eval_file_errors(names: list[str], patterns: tuple[str, ...], held_out: list[str]) -> list[str]:
    """Why DatasetConfig.eval_files cannot hold these files out: a pattern matches none (a typo, or a file
    this data version lacks), or nothing is left to train on."""
    unmatched = [
        f"DatasetConfig.eval_files: {pattern!r} matches no data file (the files: {names_listing(names)})"
        for pattern in unmatched_patterns(patterns, names)
    ]
    if unmatched or len(held_out) < len(names):
        return unmatched
    return [
        f"DatasetConfig.eval_files holds out every data file ({names_listing(names)}): nothing is left to "
        "train on; keep at least one file out of it"
    ]


def prepare(
    rows: list[dict[str, Any]],
    files: list[DataFile],
    tokenizer: PreTrainedTokenizerBase,
    options: DatasetOptions,
    collator: CollatorOptions,
    max_length: int,
    truncation: str | None = "keep_start",
) -> Prepared:
    """Check and tokenize every row; the report says whether training may start and why not
    (``truncation``: see ``encode``)."""
    encoded: list[Encoded] = []
    bad: list[dict[str, Any]] = []
    too_long = 0
    lengths: list[int] = []
    for f in files:
        columns = (
            set().union(*(r.keys() for r in rows[f.first_row : f.first_row + f.rows])) if f.rows else set()
        )
        mapping = column_mapping(columns, options, f.relpath) if f.rows else {}
        for index in range(f.first_row, f.first_row + f.rows):
            try:
                example = to_example(rows[index], mapping)
                item = encode(index, example, tokenizer, max_length, collator, truncation)
            except BadRow as exc:
                bad.append({"index": index, "file": f.relpath, "reason": str(exc)})
                too_long += exc.too_long
                continue
            encoded.append(item)
            lengths.append(item.full_length)
    stats = _length_stats(lengths, max_length)
    every_row_too_long = (
        f"every row is longer than max_length {max_length}; raise DatasetConfig.max_length "
        "(or TrainingArguments.max_length) or shorten the data"
    )
    names = [f.relpath for f in files]
    patterns = options.eval_files or ()
    held_names = held_out_names(patterns, names)
    errors = _eval_file_errors(names, patterns, held_names)
    if not encoded and bad and too_long == len(bad):
        errors.append(every_row_too_long)
    elif not encoded:
        first = f" (first: row {bad[0]['index']}: {bad[0]['reason']})" if bad else ""
        errors.append(f"no usable rows among {len(rows)}{first}: nothing to train on")
    elif bad and not options.skip_bad_rows:
        errors.append(
            f"{len(bad)} of {len(rows)} rows are unusable (first: row {bad[0]['index']} in {bad[0]['file']}: "
            f"{bad[0]['reason']}); fix them, or set DatasetConfig.skip_bad_rows: true to skip them"
        )
    elif truncation is not None and stats["truncated_rows"] == len(encoded):
        errors.append(f"{every_row_too_long} (shortest has {stats['min']} tokens)")
    held_out = [f for f in files if f.relpath in held_names]
    train, evaluation = _split(encoded, options, held_out) if not errors else ([], [])
    if held_out and not errors and not (train and evaluation):  # their files' rows were all unusable
        errors.append(
            f"no usable rows in the eval files ({names_listing(held_names)}): nothing to evaluate on"
            if not evaluation
            else f"no usable rows outside DatasetConfig.eval_files ({names_listing(held_names)}): nothing "
            "to train on"
        )
        train, evaluation = [], []
    report = {
        "ok": not errors,
        "errors": errors,
        "rows": len(rows),
        "usable_rows": len(encoded),
        "skipped_rows": len(bad) if options.skip_bad_rows else 0,
        "bad_rows": bad,
        "train_rows": len(train),
        "eval_rows": len(evaluation),
        "eval_files": held_names,  # where the held-out rows come from; [] for a split by train_test_split
        "trained_tokens": sum(sum(1 for x in e.labels if x != IGNORE) for e in encoded),
        "max_length": max_length,
        "truncation": truncation or "none: packing splits longer rows",
        "tokens": stats,
        "files": [{"path": f.relpath, "rows": f.rows, "sha256": f.sha256} for f in files],
        "sha256": combined_sha256(files),
    }
    return Prepared(train, evaluation, report)
