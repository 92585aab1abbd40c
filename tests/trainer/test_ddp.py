"""Two processes under torchrun (gloo on CPU), as the training pod runs them (the ``train`` step with the
pre-flight's data sha256): the data is split between them and only rank 0 writes; both evaluate the
held-out quarter, the base before the first step and the adapter after the last.

The run also uses a configured chat template, which must then ship with the adapter."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.trainer.conftest import ROOT
from tests.trainer.synthetic import code_word_rows, kaito_config, write_jsonl

pytestmark = pytest.mark.slow

EPOCHS = 4
# A configured template changes the tokenizer, so the results carry the tokenizer files too.
TEMPLATE = (
    "{% for m in messages %}{{ '### ' + m['role'] + '\\n' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### assistant\\n' }}{% endif %}"
)


def test_two_processes_train_on_halves_and_save_once(tmp_path, tiny_preset):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.data_utils import pack_dataset

    from trainer.config import CollatorOptions, DatasetOptions
    from trainer.data import combined_sha256, read_rows
    from trainer.preflight import prepare

    write_jsonl(tmp_path / "data" / "train.jsonl", code_word_rows())
    config = kaito_config(
        tmp_path / "config.yaml",
        num_train_epochs=EPOCHS,
        max_length=128,
        logging_steps=1,
        packing=True,  # a step is a packed row per process: the step count below checks the halves
        ModelConfig={"chat_template": TEMPLATE},
        DatasetConfig={"train_test_split": 0.75},
        # rank 0 alone answers them, before the first step and after the last, while rank 1 waits
        EvaluationConfig={"checks": [{"prompt": "Code word for Paris?", "regex": "(?s).*"}] * 3},
    )
    rows, files = read_rows(tmp_path / "data")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "trainer.qlora"]
    command += ["train", "--expect-data-sha256", combined_sha256(files)]
    command += ["--preset", "tiny-llama", "--config", str(config), "--data", str(tmp_path / "data")]
    command += ["--output", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    tokenizer = AutoTokenizer.from_pretrained(tiny_preset)
    tokenizer.chat_template = TEMPLATE
    prepared = prepare(rows, files, tokenizer, DatasetOptions(train_test_split=0.75), CollatorOptions(), 128)
    examples = Dataset.from_dict({"input_ids": [e.input_ids for e in prepared.train]})
    packed_rows = len(pack_dataset(examples, 128))  # TRL's bfd packing, as the config asks
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events].count("start") == 1  # progress from rank 0 only
    assert [e["event"] for e in events][-3:] == ["done", "eval", "evaluated"]  # the final eval, then both
    assert events[-1]["total_steps"] == EPOCHS * math.ceil(packed_rows / 2)
    assert result.stderr.count("INFO trainer: wrote ") == 1
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert metadata["metrics"]["global_step"] == events[-1]["total_steps"]
    evaluation = metadata["evaluation"]
    assert evaluation == events[-1]["evaluation"] and evaluation["heldOutRows"] == len(prepared.eval) == 24
    assert evaluation["adapterLoss"] < evaluation["baseLoss"], evaluation
    assert evaluation["checks"] == {"passed": 3, "total": 3, "basePassed": 3}
    assert (tmp_path / "out" / ".kaito-complete").is_file()
    assert not list((tmp_path / "out").glob(".results-*"))
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == TEMPLATE
