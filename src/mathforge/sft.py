"""Supervised fine-tuning of the policy on step-format solutions, with TRL's `SFTTrainer`.

    accelerate launch [--config_file accelerate_configs/X.yaml] -m mathforge.sft --config recipes/<model>/sft/config_<v>.yaml
    mathforge sft --config recipes/tiny/sft/config_toy.yaml --max_steps 50

Data: any dataset with a problem and a solution column (the toy teacher set, a Hub/local dataset with
a column mapping), or the prompt/completion set written by search extraction. Rows become TRL
conversational prompt/completion pairs, so the loss is on the completion only and the chat template
(with its end-of-turn token as EOS) is applied the same way in training and at generation.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, SFTConfig

from mathforge.config import parse_config, save_yaml, to_dict
from mathforge.errors import UserError

SOLUTION_COLUMNS = ("solution", "completion", "response", "answer_text")


@dataclass
class SFTScriptArguments:
    """What to train on; the training hyper-parameters are TRL's `SFTConfig`, the model TRL's `ModelConfig`."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id, or a local .jsonl/.json/.parquet file or folder."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "Split for evaluation (used when eval_strategy is not 'no')."}
    )
    problem_column: str | None = field(
        default=None, metadata={"help": "Question column; default: auto-detected."}
    )
    solution_column: str | None = field(
        default=None, metadata={"help": f"Solution column; default: first of {SOLUTION_COLUMNS}."}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message prepended to every prompt (None: no system turn)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N rows only."})
    mask_executor_output: bool = field(
        default=False,
        metadata={
            "help": "Leave the executor's <output> blocks out of the loss (the system writes them, as RL's "
            "env_mask says); the model still reads them. Default false: the loss covers the whole completion."
        },
    )


def _read(name: str, config: str | None, split: str):
    import datasets

    from mathforge.data.loading import _LOCAL_SUFFIXES, _looks_local, _resolve_local

    if _looks_local(name):
        path = _resolve_local(Path(name).expanduser(), split)
        if not path.is_file():
            raise UserError(f"data file not found: {path}")
        return datasets.load_dataset(_LOCAL_SUFFIXES[path.suffix], data_files=str(path), split="train")
    return datasets.load_dataset(name, config, split=split)


def to_prompt_completion(dataset, args: SFTScriptArguments):
    """Turn rows into TRL conversational prompt/completion pairs (rows already in that form pass through)."""
    from mathforge.data.loading import PROBLEM_COLUMNS, _pick

    columns = dataset.column_names
    if "prompt" in columns and "completion" in columns:
        return dataset.select_columns(["prompt", "completion"])
    problem_col = _pick(columns, args.problem_column, PROBLEM_COLUMNS, "problem", args.dataset_name)
    solution_col = _pick(columns, args.solution_column, SOLUTION_COLUMNS, "solution", args.dataset_name)
    system = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []

    def convert(row):
        return {
            "prompt": system + [{"role": "user", "content": row[problem_col]}],
            "completion": [{"role": "assistant", "content": row[solution_col]}],
        }

    return dataset.map(convert, remove_columns=columns, desc="prompt/completion")


def output_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the ``<output>`` blocks in ``text``, each with the newline after its closing tag:
    exactly what the step loop appends after a step (:mod:`mathforge.rollout`)."""
    from mathforge.steps import OUTPUT_CLOSE, OUTPUT_OPEN

    spans, start = [], text.find(OUTPUT_OPEN)
    while start != -1:
        end = text.find(OUTPUT_CLOSE, start)
        if end == -1:
            break
        end += len(OUTPUT_CLOSE) + text.startswith("\n", end + len(OUTPUT_CLOSE))
        spans.append((start, end))
        start = text.find(OUTPUT_OPEN, end)
    return spans


def tokenize_masking_outputs(dataset, tokenizer):
    """Pre-tokenized rows (``input_ids``, ``labels``) for TRL: the chat template rendered as TRL renders it,
    labels -100 on the prompt and on every token that lies inside an ``<output>`` block of the completion."""

    def encode(row):
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        if not full.startswith(prompt):
            raise UserError("the chat template renders the prompt differently inside a conversation")
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        spans = [(a + len(prompt), b + len(prompt)) for a, b in output_spans(full[len(prompt) :])]
        labels = []
        for token, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
            inside = any(lo <= a and b <= hi for lo, hi in spans)
            labels.append(-100 if a < len(prompt) or inside else token)
        return {"input_ids": enc["input_ids"], "labels": labels}

    return dataset.map(encode, remove_columns=dataset.column_names, desc="tokenize, outputs masked")


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` folder in output_dir (what a restarted run resumes from).

    The Trainer writes `trainer_state.json` last, so a checkpoint without it was cut off by a kill
    mid-save and is passed over for the one before it."""
    if not os.path.isdir(output_dir):
        return None
    found = [
        (int(name.split("-")[1]), os.path.join(output_dir, name))
        for name in os.listdir(output_dir)
        if name.startswith("checkpoint-") and name.split("-")[1].isdigit()
    ]
    for _, path in sorted(found, reverse=True):
        if os.path.isfile(os.path.join(path, "trainer_state.json")):
            return path
    return None


def _end_of_turn_token(tokenizer) -> str | None:
    """The token the chat template closes an assistant turn with, so generation stops there."""
    template = tokenizer.chat_template or ""
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<｜end▁of▁sentence｜>"):
        if token in template and token in tokenizer.get_vocab():
            return token
    return None


def write_rank_report(trainer, output_dir: str, resumed_from: str | None = None) -> None:
    """Each rank writes what it trained on, so a multi-process launch can be checked after the fact."""
    state, acc = trainer.state, trainer.accelerator
    report = {
        "rank": acc.process_index,
        "resumed_from": os.path.basename(resumed_from) if resumed_from else None,
        "world_size": acc.num_processes,
        "global_step": state.global_step,
        "train_loss_first": next((h["loss"] for h in state.log_history if "loss" in h), None),
        "train_loss_last": next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None),
        "distributed_type": str(acc.distributed_type),
    }
    ranks = Path(output_dir) / "ranks"
    ranks.mkdir(parents=True, exist_ok=True)
    (ranks / f"rank_{acc.process_index}.json").write_text(json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse_config(
        [SFTScriptArguments, SFTConfig, ModelConfig], argv, prog="mathforge sft"
    )
    train(script_args, training_args, model_args)


def train(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig):
    from transformers import AutoTokenizer
    from trl import SFTTrainer, get_peft_config

    if not model_args.model_name_or_path:
        raise UserError(
            "no model: set model_name_or_path (a Hub id or a local folder, e.g. from `mathforge tiny-model`)"
        )
    if not script_args.dataset_name:
        raise UserError("no training data: set dataset_name (Hub id or local .jsonl/.parquet)")
    model_path = model_args.model_name_or_path
    if (model_path.startswith((".", "/")) or os.sep in model_path) and not os.path.isdir(model_path):
        if not Path(model_path, "config.json").exists() and not os.path.exists(model_path):
            raise UserError(f"model folder not found: {model_path}")

    train_set = to_prompt_completion(
        _read(script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split),
        script_args,
    )
    if script_args.max_train_samples is not None:
        train_set = train_set.select(range(min(script_args.max_train_samples, len(train_set))))
    eval_set = None
    if training_args.eval_strategy != "no" and script_args.dataset_test_split:
        eval_set = to_prompt_completion(
            _read(script_args.dataset_name, script_args.dataset_config, script_args.dataset_test_split),
            script_args,
        )

    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision)
    if training_args.eos_token is None:
        training_args.eos_token = _end_of_turn_token(tokenizer)
    if script_args.mask_executor_output:
        train_set = tokenize_masking_outputs(train_set, tokenizer)
        eval_set = tokenize_masking_outputs(eval_set, tokenizer) if eval_set is not None else None
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }

    trainer = SFTTrainer(
        model=model_path,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    resume = training_args.resume_from_checkpoint or last_checkpoint(training_args.output_dir)
    if resume:
        trainer.accelerator.print(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)

    trainer.save_model(training_args.output_dir)
    write_rank_report(trainer, training_args.output_dir, resume)
    if trainer.accelerator.is_main_process:
        save_yaml(
            to_dict(script_args, model_args, training_args), Path(training_args.output_dir) / "recipe.yaml"
        )
        trainer.create_model_card(dataset_name=script_args.dataset_name, tags=["mathforge", "sft"])
        trainer.accelerator.print(
            f"saved model, tokenizer, recipe.yaml and README.md to {training_args.output_dir}"
        )
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.accelerator.end_training()
    return trainer


if __name__ == "__main__":
    from mathforge.cli import run_main

    sys.exit(run_main(main, sys.argv[1:], "mathforge sft"))
