"""Supervised fine-tuning of the policy on step-format solutions, with TRL's `SFTTrainer`.

    accelerate launch [--config_file accelerate_configs/X.yaml] -m mathforge.sft --config recipes/<model>/sft/config_<v>.yaml
    mathforge sft --config recipes/tiny/sft/config_toy.yaml --max_steps 50

Data: any dataset with a problem and a solution column (the toy teacher set, a Hub/local dataset with
a column mapping), or the prompt/completion set written by search extraction. Rows become TRL
conversational prompt/completion pairs, so the loss is on the completion only and the chat template
(with its end-of-turn token as EOS) is applied the same way in training and at generation.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from trl import ModelConfig, SFTConfig

from mathforge import training
from mathforge.config import parse_config
from mathforge.data.loading import PROBLEM_COLUMNS, pick_column, read_dataset
from mathforge.errors import UserError
from mathforge.steps import end_of_turn_token

SOLUTION_COLUMNS = ("solution", "completion", "response", "answer_text")


@dataclass
class SFTScriptArguments(training.DatasetArguments):
    """What to train on (the dataset fields are TRL's `ScriptArguments`, see
    :class:`~mathforge.training.DatasetArguments`; ``dataset_test_split`` is evaluated when eval_strategy is
    not 'no'); the training hyper-parameters are TRL's `SFTConfig`, the model TRL's `ModelConfig`."""

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


def to_prompt_completion(dataset, args: SFTScriptArguments):
    """Turn rows into TRL conversational prompt/completion pairs (rows already in that form pass through)."""
    columns = dataset.column_names
    if "prompt" in columns and "completion" in columns:
        return dataset.select_columns(["prompt", "completion"])
    problem_col = pick_column(columns, args.problem_column, PROBLEM_COLUMNS, "problem", args.dataset_name)
    solution_col = pick_column(columns, args.solution_column, SOLUTION_COLUMNS, "solution", args.dataset_name)
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


def config_types(recipe: dict | None = None) -> list[type]:
    """The option dataclasses `mathforge sft` parses (evolve checks step recipes against them)."""
    return [SFTScriptArguments, SFTConfig, ModelConfig]


def train(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig):
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    model_path = training.setup_model(
        model_args, training_args, "(a Hub id or a local folder, e.g. from `mathforge tiny-model`)"
    )
    if not script_args.dataset_name:
        raise UserError("no training data: set dataset_name (Hub id or local .jsonl/.parquet)")
    push = training.hub_push(training_args)

    name, config = script_args.dataset_name, script_args.dataset_config
    train_set = to_prompt_completion(read_dataset(name, script_args.dataset_train_split, config), script_args)
    if script_args.max_train_samples is not None:
        train_set = train_set.select(range(min(script_args.max_train_samples, len(train_set))))
    eval_set = None
    if training_args.eval_strategy != "no" and script_args.dataset_test_split:
        eval_set = to_prompt_completion(
            read_dataset(name, script_args.dataset_test_split, config), script_args
        )

    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision)
    if training_args.eos_token is None:
        training_args.eos_token = end_of_turn_token(tokenizer)
    if script_args.mask_executor_output:
        train_set = tokenize_masking_outputs(train_set, tokenizer)
        eval_set = tokenize_masking_outputs(eval_set, tokenizer) if eval_set is not None else None

    trainer = SFTTrainer(
        **training.trainer_inputs(model_path, training_args, model_args, tokenizer, train_set, eval_set)
    )
    resume = training.train_resuming(trainer)
    training.finish_training(trainer, [script_args, model_args, training_args], ["sft"], resume, push)
    return trainer


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse_config(config_types(), argv, prog="mathforge sft")
    train(script_args, training_args, model_args)


if __name__ == "__main__":
    from mathforge.cli import run_main

    sys.exit(run_main(main, sys.argv[1:], "mathforge sft"))
