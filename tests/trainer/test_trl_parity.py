"""The pre-flight's tokens and loss masks are TRL's: SFTTrainer, given the same rows raw, builds the same
input ids and labels (the first label aside: nothing precedes it, so it is never a target)."""

from __future__ import annotations

import pytest

from trainer.config import CollatorOptions
from trainer.data import to_example
from trainer.preflight import IGNORE, encode

ROWS = {
    "text": [{"text": "hello world this is text"}, {"text": "another line of words"}],
    "prompt_completion": [
        {"prompt": "Q: what is 2+2? A:", "completion": " four"},
        {"prompt": "Say hi", "completion": " hi there"},
    ],
    "messages": [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "see you"},
            ]
        }
    ],
}
COLUMNS = {
    "text": {"text": "text"},
    "prompt_completion": {"prompt": "prompt", "completion": "completion"},
    "messages": {"messages": "messages"},
}
# A template without {% generation %} marks (the pre-flight renders it turn by turn) and the same one
# marked, which TRL needs for assistant-only loss.
PLAIN = (
    "{% for m in messages %}{{ '### ' + m['role'] + '\\n' }}{{ m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### assistant\\n' }}{% endif %}"
)
MARKED = PLAIN.replace(
    "{{ m['content'] + '\\n' }}",
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '\\n' }}{% endgeneration %}"
    "{% else %}{{ m['content'] + '\\n' }}{% endif %}",
)


@pytest.fixture(scope="module")
def tiny_model(tiny_preset):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_preset)


def _trl_rows(model, tokenizer, rows, only: bool, shape: str) -> list[dict]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir="unused",
        use_cpu=True,
        bf16=False,
        report_to="none",
        completion_only_loss=only,
        assistant_only_loss=only and shape == "messages",
        max_length=None,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    return list(trainer.train_dataset)


@pytest.mark.parametrize("only", [True, False], ids=["masked", "every-token"])
@pytest.mark.parametrize("shape", list(ROWS))
def test_preflight_matches_trls_tokens_and_labels(tiny_model, tiny_tokenizer, shape, only):
    """The tiny preset's template carries {% generation %} marks, as TRL requires for assistant-only loss."""
    trl_rows = _trl_rows(tiny_model, tiny_tokenizer, ROWS[shape], only, shape)
    options = CollatorOptions(completion_only_loss=only, assistant_only_loss=only)
    for i, row in enumerate(ROWS[shape]):
        ours = encode(i, to_example(row, COLUMNS[shape]), tiny_tokenizer, 10**6, options)
        assert ours.input_ids == trl_rows[i]["input_ids"]
        assert ours.labels[1:] == trl_rows[i]["labels"][1:]
        masked = only and shape != "text"  # text has nothing to mask
        assert (IGNORE in ours.labels[1:]) is masked


def test_an_unmarked_template_masks_what_trl_masks_with_the_marks(tiny_model, tiny_tokenizer):
    import copy

    plain, marked = copy.deepcopy(tiny_tokenizer), copy.deepcopy(tiny_tokenizer)
    plain.chat_template, marked.chat_template = PLAIN, MARKED
    [trl_row] = _trl_rows(tiny_model, marked, ROWS["messages"], True, "messages")
    options = CollatorOptions(assistant_only_loss=True)
    ours = encode(0, to_example(ROWS["messages"][0], COLUMNS["messages"]), plain, 10**6, options)
    assert ours.input_ids == trl_row["input_ids"] and ours.labels[1:] == trl_row["labels"][1:]
