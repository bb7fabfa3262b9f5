"""What the training stages (`mathforge sft`, `ppm`, `rl`) share: dataset options, the model they start from,
resuming, and the end of training (save, report, recipe, card, Hub).

Each stage's ``train`` reads as: check and set up the model (:func:`setup_model`), check the Hub target
(:func:`hub_push`), load data, build TRL's trainer (from :func:`trainer_inputs`), :func:`train_resuming`,
:func:`finish_training`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints
from trl import ScriptArguments

from mathforge.config import resolve, save_yaml, to_dict
from mathforge.errors import UserError


@dataclass
class DatasetArguments(ScriptArguments):
    """TRL's `ScriptArguments`, as the mathforge training stages read them.

    Parameters:
        dataset_name (`str` or `None`, defaults to `None`): Hub dataset id, or a local .jsonl/.json/.parquet
            file or a folder holding `<split>.jsonl` (see :func:`mathforge.config.is_local`).
        dataset_config (`str` or `None`, defaults to `None`): Hub dataset configuration name.
        dataset_train_split (`str`, defaults to `"train"`): split to train on.
        dataset_test_split (`str` or `None`, defaults to `None`): held-out split; `None`: none (TRL's default
            is `"test"`; here a split must be asked for).
        dataset_streaming, ignore_bias_buffers: TRL's, not supported (an error when set).
    """

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id, or a local .jsonl/.json/.parquet file or folder with <split>.jsonl."
        },
    )
    dataset_test_split: str | None = field(default=None, metadata={"help": "Held-out split (default: none)."})

    def __post_init__(self):
        for name in ("dataset_streaming", "ignore_bias_buffers"):
            if getattr(self, name):
                raise ValueError(f"{name} is not supported by mathforge's training stages: remove it")


def setup_model(model_args, training_args, hint: str) -> str:
    """The model to train from TRL's `ModelConfig`: checked (set; an existing folder when it is a local path,
    ``~`` expanded) and returned, with ``training_args.model_init_kwargs`` set from `ModelConfig` (revision,
    attention implementation, dtype; the recipe's own ``model_init_kwargs`` take precedence).

    hint: how to set ``model_name_or_path``, for the error when it is not set.
    """
    if not model_args.model_name_or_path:
        raise UserError(f"no model: set model_name_or_path {hint}")
    path = resolve(model_args.model_name_or_path, "model folder")
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    return path


def trainer_inputs(model_path: str, training_args, model_args, tokenizer, train_set, eval_set=None) -> dict:
    """The keyword arguments every stage gives its TRL trainer: the model (a path TRL loads with the
    ``model_init_kwargs`` of :func:`setup_model`), the options, the data, the tokenizer, and the PEFT adapter
    that `ModelConfig` asks for (None: full fine-tuning)."""
    from trl import get_peft_config

    return {
        "model": model_path,
        "args": training_args,
        "train_dataset": train_set,
        "eval_dataset": eval_set,
        "processing_class": tokenizer,
        "peft_config": get_peft_config(model_args),
    }


def hub_push(training_args):
    """With ``push_to_hub: true``: the :class:`mathforge.push.PushConfig` that publishes ``output_dir`` when
    training ends (:func:`finish_training`), checked now (``hub_model_id`` owner/name, a token from
    ``hub_token``, ``HF_TOKEN`` or ``hf auth login``); else None.

    The trainer's own pushes are turned off (``training_args.push_to_hub`` False while training), so the model
    reaches the Hub once, through :func:`mathforge.push.publish` with mathforge's card, like every other push.
    Checkpoints are not pushed (``hub_strategy`` has no effect); ``hub_private_repo`` unset means private.
    """
    if not training_args.push_to_hub:
        return None
    from mathforge.push import push_config

    config = push_config(
        "hub_model_id (for push_to_hub)",
        repo_id=training_args.hub_model_id,
        model_dir=training_args.output_dir,
        token=training_args.hub_token,
        private=training_args.hub_private_repo is not False,
    )
    training_args.push_to_hub = False
    return config


COMPLETE = "checkpoint_complete"  # written into a checkpoint once every rank has finished saving it


class MarkCompleteCheckpoints(TrainerCallback):
    """After a checkpoint is saved, wait for every rank, then write an empty ``checkpoint_complete`` into it.

    Rank 0 writes ``trainer_state.json`` while the other ranks may still be writing their RNG state (or
    their DeepSpeed shards): a kill in between leaves a checkpoint that looks finished but fails to load.
    """

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        PartialState().wait_for_everyone()
        if args.should_save:
            Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", COMPLETE).touch()


def last_checkpoint(output_dir: str, say=print) -> str | None:
    """The newest `checkpoint-N` folder in output_dir that every rank finished saving (marked by
    :class:`MarkCompleteCheckpoints`): what a restarted run resumes from. A newer one cut off by a kill
    mid-save is passed over, with a note to ``say``."""
    for path in reversed(sort_checkpoints(output_dir)):  # newest first
        if os.path.isfile(os.path.join(path, COMPLETE)):
            return path
        say(f"passing over {path}: not marked {COMPLETE} (cut off mid-save, or not saved by mathforge)")
    return None


def train_resuming(trainer) -> str | None:
    """Train, resuming from ``resume_from_checkpoint`` or else the newest complete checkpoint in
    ``output_dir``; returns the checkpoint resumed from (None: a fresh start). Checkpoints saved on the way
    are marked complete (:class:`MarkCompleteCheckpoints`)."""
    args = trainer.args
    trainer.add_callback(MarkCompleteCheckpoints())
    resume = args.resume_from_checkpoint or last_checkpoint(args.output_dir, trainer.accelerator.print)
    if resume:
        trainer.accelerator.print(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    return resume


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


def finish_training(
    trainer, configs: list, tags: list[str], resumed_from: str | None, push=None, also_saved=()
) -> None:
    """The end of every training stage, on every rank: save the model and tokenizer to ``output_dir`` and
    write this rank's report (``ranks/rank_<i>.json``); on the main process write ``recipe.yaml`` (every
    option of ``configs``, resolved: the stage's script arguments first, whose ``dataset_name`` goes on the
    card) and TRL's model card (``README.md``, tagged "mathforge" and ``tags``), say so, and publish with
    ``push`` (from :func:`hub_push`; None: no push); then end the trackers.

    resumed_from: the checkpoint training resumed from (:func:`train_resuming`), for the rank report.
    also_saved: other files the stage wrote to ``output_dir``, named in the message.
    """
    args = trainer.args
    trainer.save_model(args.output_dir)
    write_rank_report(trainer, args.output_dir, resumed_from)
    if trainer.accelerator.is_main_process:
        if push is not None:
            args.push_to_hub = True  # the recipe records the option as given (hub_push turned it off)
        save_yaml(to_dict(*configs), Path(args.output_dir) / "recipe.yaml")
        trainer.create_model_card(dataset_name=configs[0].dataset_name, tags=["mathforge", *tags])
        saved = ", ".join(["recipe.yaml", *also_saved])
        trainer.accelerator.print(f"saved model, tokenizer, {saved} and README.md to {args.output_dir}")
        if push is not None:
            from mathforge.push import publish

            publish(push)
    trainer.accelerator.end_training()
