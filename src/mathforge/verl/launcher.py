"""`mathforge rl --backend verl`: a recipe -> Hydra overrides of verl 0.9.1's ``ppo_trainer`` config, a run
of ``verl.trainer.main_ppo`` (here, or on a Ray cluster with ``ray job submit``), then verl's model merger
turns the last FSDP checkpoint into a Hugging Face folder (``output_dir``) that `mathforge eval` and
`mathforge push` take as they are.

    mathforge rl --backend verl --config recipes/Qwen2.5-Math-1.5B/rl/config_ppo_verl.yaml --dry_run
    mathforge rl --config recipes/Qwen2.5-Math-1.5B/rl/config_ppo_verl.yaml        # backend: verl in the recipe

``algorithm: ppo`` is verl's GAE advantage with a critic (initialised from the policy); ``grpo`` is group
advantages without one: critic keys are written only for PPO. Recipe keys mean what they mean for
`mathforge rl` where both have them (learning_rate, beta, num_generations, temperature, max_completion_length,
reward_funcs, the step-format settings); the rest are verl's, named after the verl key they set.
``verl_overrides`` appends raw Hydra overrides (validated like the others).

``--dry_run`` prints the command and its overrides, checks the batch arithmetic (verl's own rules: prompts x
generations divisible by nodes x GPUs, mini-batches into micro-batches per GPU) and composes the overrides
with Hydra against verl 0.9.1's config (a misspelled key fails there); nothing is written. Hydra runs in the
config environment (``make venv-verl-config``, a subprocess), never in the main one: its antlr4 4.9 pin would
break math-verify's LaTeX parser, the grader of every reward. Where the whole of verl imports (the verl
environment) it also runs verl's ``validate_config``.

verl runs in its own environment (``make venv-verl``: verl pins torch, vLLM and transformers versions that
TRL 1.16 cannot share), found at ``verl_python`` (default ``.venv-verl/bin/python``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mathforge.config import is_local, load_yaml, parse_config, resolve, save_yaml, to_dict
from mathforge.errors import UserError
from mathforge.rewards import RewardArguments
from mathforge.verl import VERL_VERSION, compose_config
from mathforge.verl.agent_loop import AGENT_NAME, StepLoopConfig
from mathforge.verl.reward import TERMS

ALGORITHMS = {"ppo": "gae", "grpo": "grpo"}
_PLAIN = re.compile(r"[A-Za-z0-9_./~+-][A-Za-z0-9_./:~+-]*")  # strings Hydra reads unquoted as themselves
REWARD_MODULE = "pkg://mathforge.verl.reward"


@dataclass
class VerlArguments:
    """Recipe of `mathforge rl --backend verl` (step-format and reward settings: their own dataclasses)."""

    backend: str = field(default="verl", metadata={"help": "RL backend: verl here (trl: `mathforge rl`)."})
    dry_run: bool = field(
        default=False, metadata={"help": "Print and validate the verl overrides; run nothing."}
    )
    algorithm: str = field(default="ppo", metadata={"help": "ppo (GAE, with a critic) or grpo (no critic)."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "The stage-1 policy (HF folder)."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Problems: Hub id or local file/folder."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "Split verl validates on every test_steps (None: no validation)."}
    )
    problem_column: str | None = field(default=None, metadata={"help": "Question column; default: detected."})
    answer_column: str | None = field(
        default=None, metadata={"help": "Gold answer column; default: detected."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use the first N problems only."})
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message of every prompt (None: none, as SFT trains)."}
    )
    output_dir: str = field(
        default="runs/rl-verl", metadata={"help": "Merged HF model; verl/ holds the run."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={"help": f"Rewards by name, from: {', '.join(TERMS)}."},
    )
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward."})
    nnodes: int = field(default=1, metadata={"help": "trainer.nnodes: machines in the Ray cluster."})
    n_gpus_per_node: int = field(default=8, metadata={"help": "trainer.n_gpus_per_node."})
    train_batch_size: int = field(default=32, metadata={"help": "data.train_batch_size: problems per step."})
    num_generations: int = field(default=8, metadata={"help": "rollout.n: solutions per problem."})
    ppo_mini_batch_size: int = field(
        default=32, metadata={"help": "Problems per PPO update (x num_generations)."}
    )
    ppo_micro_batch_size_per_gpu: int = field(
        default=4, metadata={"help": "Sequences per forward pass per GPU."}
    )
    ppo_epochs: int = field(default=1, metadata={"help": "Passes over each batch of rollouts."})
    max_prompt_length: int = field(default=1024, metadata={"help": "data.max_prompt_length (tokens)."})
    max_completion_length: int = field(
        default=3072, metadata={"help": "data.max_response_length: model + executor tokens of a solution."}
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "Actor learning rate."})
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "constant or cosine (actor and critic)."}
    )
    warmup_ratio: float = field(default=0.0, metadata={"help": "Share of the steps with a linear warm-up."})
    beta: float = field(
        default=0.0, metadata={"help": "KL loss coefficient against the reference (0: none)."}
    )
    kl_loss_type: str = field(
        default="low_var_kl", metadata={"help": "verl's kl_loss_type (k3: low_var_kl)."}
    )
    clip_ratio: float = field(default=0.2, metadata={"help": "PPO clip range of the policy ratio."})
    entropy_coeff: float = field(default=0.0, metadata={"help": "Entropy bonus coefficient."})
    loss_agg_mode: str = field(default="token-mean", metadata={"help": "verl's loss_agg_mode."})
    critic_learning_rate: float = field(default=1e-5, metadata={"help": "ppo: critic learning rate."})
    critic_warmup: int = field(default=0, metadata={"help": "ppo: steps that train only the critic first."})
    cliprange_value: float = field(default=0.5, metadata={"help": "ppo: value clip range."})
    gamma: float = field(default=1.0, metadata={"help": "ppo: GAE discount."})
    lam: float = field(default=1.0, metadata={"help": "ppo: GAE lambda."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of rollouts."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of rollouts."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor parallelism of rollouts."})
    gpu_memory_utilization: float = field(default=0.5, metadata={"help": "vLLM's share of GPU memory."})
    attn_implementation: str = field(
        default="sdpa",
        metadata={"help": "sdpa (no flash-attn needed) or flash_attention_2 (verl's default)."},
    )
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Activation checkpointing."})
    param_offload: bool = field(
        default=False, metadata={"help": "FSDP parameter and optimizer offload to CPU."}
    )
    num_train_epochs: int = field(default=1, metadata={"help": "trainer.total_epochs."})
    max_steps: int | None = field(
        default=None, metadata={"help": "trainer.total_training_steps (None: epochs)."}
    )
    save_steps: int = field(default=-1, metadata={"help": "trainer.save_freq (-1: only at the end)."})
    test_steps: int = field(default=-1, metadata={"help": "trainer.test_freq (-1: never)."})
    seed: int = field(default=42, metadata={"help": "Data shuffling seed."})
    logger: list[str] = field(default_factory=lambda: ["console"], metadata={"help": "console, wandb, ..."})
    project_name: str = field(default="mathforge", metadata={"help": "trainer.project_name."})
    ray_address: str | None = field(
        default=None,
        metadata={"help": "Ray dashboard address (http://head:8265): submit with `ray job submit`."},
    )
    verl_python: str = field(
        default=".venv-verl/bin/python", metadata={"help": "Python of the verl environment (make venv-verl)."}
    )
    verl_overrides: list[str] = field(
        default_factory=list, metadata={"help": "Raw Hydra overrides, appended."}
    )
    merge: bool = field(default=True, metadata={"help": "Merge the last FSDP checkpoint into output_dir."})

    def __post_init__(self):
        if self.backend != "verl":
            raise ValueError(
                f"backend must be verl here, not {self.backend!r} (the TRL backend: mathforge rl)"
            )
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be ppo or grpo on the verl backend, not {self.algorithm!r}")


def wants_verl(argv: list[str]) -> bool:
    """Whether a `mathforge rl` command line is for this backend: ``--backend verl`` or ``backend: verl``."""
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1] == "verl"
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1] == "verl"
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        try:
            return load_yaml(argv[argv.index("--config") + 1]).get("backend") == "verl"
        except UserError:  # a missing or malformed recipe: the command it goes to says so
            return False
    return False


# --- recipe -> overrides -----------------------------------------------------------------------------------------


def hydra_value(value) -> str:
    """A Python value in Hydra's override grammar (lists bracketed; strings quoted unless plain words or paths)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in ("true", "false", "null", "nan", "inf"):
        try:
            float(text)
        except ValueError:
            return text  # a bare word or path, as one types it
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def paths(args: VerlArguments) -> dict[str, Path]:
    run = Path(args.output_dir) / "verl"
    return {
        "run": run,
        "train": run / "train.parquet",
        "test": run / "test.parquet",
        "agent_loops": run / "agent_loops.yaml",
        "checkpoints": run / "checkpoints",
    }


def check(args: VerlArguments, loop: StepLoopConfig, reward: RewardArguments) -> None:
    """Recipe checks verl would fail on later (or silently mis-train with), as one-line UserErrors."""
    if not args.model_name_or_path:
        raise UserError("no model: set model_name_or_path (the stage-1 policy, e.g. the SFT output folder)")
    if not args.dataset_name:
        raise UserError("no training data: set dataset_name (problems with gold answers)")
    unknown = [n for n in args.reward_funcs if n not in TERMS]
    if unknown:
        raise UserError(
            f"reward '{unknown[0]}' is not available on the verl backend (verl scores one rollout at a time; "
            f"choose from: {', '.join(TERMS)})"
        )
    if not args.reward_funcs:
        raise UserError(f"no rewards: set reward_funcs to some of {', '.join(TERMS)}")
    if args.reward_weights is not None and len(args.reward_weights) != len(args.reward_funcs):
        raise UserError(
            f"reward_weights has {len(args.reward_weights)} values for {len(args.reward_funcs)} reward_funcs"
        )
    if "ppm" in args.reward_funcs and not reward.ppm_path:
        raise UserError("the ppm reward needs ppm_path (a folder written by `mathforge ppm`)")
    n_gpus = args.nnodes * args.n_gpus_per_node
    if min(args.nnodes, args.n_gpus_per_node, args.train_batch_size, args.num_generations) < 1:
        raise UserError("nnodes, n_gpus_per_node, train_batch_size and num_generations must be at least 1")
    if args.algorithm == "grpo" and args.num_generations < 2:
        raise UserError("grpo compares solutions of one problem: set num_generations to 2 or more")
    sequences = args.train_batch_size * args.num_generations
    if sequences % n_gpus:
        raise UserError(
            f"train_batch_size x num_generations ({sequences}) must be divisible by nnodes x n_gpus_per_node "
            f"({n_gpus}); change train_batch_size"
        )
    if args.ppo_mini_batch_size > args.train_batch_size or args.train_batch_size % args.ppo_mini_batch_size:
        raise UserError(
            f"ppo_mini_batch_size ({args.ppo_mini_batch_size}) must divide train_batch_size ({args.train_batch_size})"
        )
    mini = args.ppo_mini_batch_size * args.num_generations
    if mini % n_gpus or (mini // n_gpus) % args.ppo_micro_batch_size_per_gpu:
        raise UserError(
            f"ppo_mini_batch_size x num_generations ({mini}) split over {n_gpus} GPUs must be a multiple of "
            f"ppo_micro_batch_size_per_gpu ({args.ppo_micro_batch_size_per_gpu}) on each GPU"
        )
    if args.n_gpus_per_node % args.tensor_parallel_size:
        raise UserError(
            f"tensor_parallel_size ({args.tensor_parallel_size}) must divide n_gpus_per_node ({args.n_gpus_per_node})"
        )
    if loop.rollout_format == "steps" and loop.max_step_tokens > args.max_completion_length:
        raise UserError("max_step_tokens is larger than max_completion_length; lower it")


def reward_kwargs(args: VerlArguments, reward: RewardArguments) -> dict:
    """What verl passes to :func:`mathforge.verl.reward.compute_score` on every call."""
    out = {"reward_funcs": list(args.reward_funcs)}
    out["reward_weights"] = [float(w) for w in (args.reward_weights or [1.0] * len(args.reward_funcs))]
    for f in dataclasses.fields(RewardArguments):
        if f.name.startswith("judge_"):
            continue  # ai_feedback is not available on this backend
        value = getattr(reward, f.name)
        if value != f.default:
            out[f.name] = value
    return out


def agent_loop_entries(loop: StepLoopConfig) -> list[dict]:
    """verl's agent-loop config file: our loop's class and its constructor kwargs."""
    return [
        {
            "name": AGENT_NAME,
            "_target_": "mathforge.verl.agent_loop.StepAgentLoop",
            **dataclasses.asdict(loop),
        }
    ]


def build_overrides(args: VerlArguments, loop: StepLoopConfig, reward: RewardArguments) -> list[str]:
    """The Hydra overrides of verl's ``ppo_trainer`` config for this recipe (``+`` only for keys verl leaves
    open: the model's ``override_config`` and the reward function's kwargs)."""
    p = paths(args)
    ppo = args.algorithm == "ppo"
    flash = args.attn_implementation == "flash_attention_2"
    model = args.model_name_or_path
    model = os.path.abspath(resolve(model)) if is_local(model) else model
    experiment = Path(args.output_dir).name
    o = {
        "algorithm.adv_estimator": ALGORITHMS[args.algorithm],
        "algorithm.use_kl_in_reward": False,
        "data.train_files": str(p["train"].resolve()),
        "data.val_files": str((p["test"] if args.dataset_test_split else p["train"]).resolve()),
        "data.train_batch_size": args.train_batch_size,
        "data.max_prompt_length": args.max_prompt_length,
        "data.max_response_length": args.max_completion_length,
        "data.filter_overlong_prompts": True,
        "data.truncation": "error",
        "data.seed": args.seed,
        "actor_rollout_ref.model.path": model,
        "+actor_rollout_ref.model.override_config.attn_implementation": args.attn_implementation,
        "actor_rollout_ref.model.use_remove_padding": flash,  # packed sequences need flash-attn's varlen kernel
        "actor_rollout_ref.model.enable_gradient_checkpointing": args.gradient_checkpointing,
        "actor_rollout_ref.actor.optim.lr": args.learning_rate,
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": args.warmup_ratio,
        "actor_rollout_ref.actor.optim.lr_scheduler_type": args.lr_scheduler_type,
        "actor_rollout_ref.actor.ppo_mini_batch_size": args.ppo_mini_batch_size,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": args.ppo_micro_batch_size_per_gpu,
        "actor_rollout_ref.actor.ppo_epochs": args.ppo_epochs,
        "actor_rollout_ref.actor.use_kl_loss": args.beta > 0,
        "actor_rollout_ref.actor.kl_loss_coef": args.beta,
        "actor_rollout_ref.actor.kl_loss_type": args.kl_loss_type,
        "actor_rollout_ref.actor.clip_ratio": args.clip_ratio,
        "actor_rollout_ref.actor.entropy_coeff": args.entropy_coeff,
        "actor_rollout_ref.actor.loss_agg_mode": args.loss_agg_mode,
        "actor_rollout_ref.actor.fsdp_config.param_offload": args.param_offload,
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": args.param_offload,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": args.ppo_micro_batch_size_per_gpu,
        "actor_rollout_ref.ref.fsdp_config.param_offload": args.param_offload,
        "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.rollout.n": args.num_generations,
        "actor_rollout_ref.rollout.temperature": args.temperature,
        "actor_rollout_ref.rollout.top_p": args.top_p,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": args.tensor_parallel_size,
        "actor_rollout_ref.rollout.gpu_memory_utilization": args.gpu_memory_utilization,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": args.ppo_micro_batch_size_per_gpu,
        # our agent loop stops generation at the step tags, which vLLM matches only with a tokenizer
        "actor_rollout_ref.rollout.skip_tokenizer_init": False,
        "actor_rollout_ref.rollout.agent.default_agent_loop": AGENT_NAME,
        "actor_rollout_ref.rollout.agent.agent_loop_config_path": str(p["agent_loops"].resolve()),
        "reward.custom_reward_function.path": REWARD_MODULE,
        "reward.custom_reward_function.name": "compute_score",
        "reward.reward_manager.name": "naive",
        "trainer.nnodes": args.nnodes,
        "trainer.n_gpus_per_node": args.n_gpus_per_node,
        "trainer.total_epochs": args.num_train_epochs,
        "trainer.total_training_steps": args.max_steps,
        "trainer.save_freq": args.save_steps,
        "trainer.test_freq": args.test_steps,
        "trainer.val_before_train": bool(args.dataset_test_split) and args.test_steps > 0,
        "trainer.default_local_dir": str(p["checkpoints"].resolve()),
        "trainer.logger": list(args.logger),
        "trainer.project_name": args.project_name,
        "trainer.experiment_name": experiment,
    }
    for key, value in reward_kwargs(args, reward).items():
        o[f"+reward.custom_reward_function.reward_kwargs.{key}"] = value
    if ppo:  # the critic: a value head on a copy of the policy
        o.update(
            {
                "critic.model.path": model,
                "+critic.model.override_config.attn_implementation": args.attn_implementation,
                "critic.model.use_remove_padding": flash,
                "critic.model.enable_gradient_checkpointing": args.gradient_checkpointing,
                "critic.optim.lr": args.critic_learning_rate,
                "critic.optim.lr_warmup_steps_ratio": args.warmup_ratio,
                "critic.optim.lr_scheduler_type": args.lr_scheduler_type,
                "critic.ppo_micro_batch_size_per_gpu": args.ppo_micro_batch_size_per_gpu,
                "critic.cliprange_value": args.cliprange_value,
                "critic.fsdp.param_offload": args.param_offload,
                "critic.fsdp.optimizer_offload": args.param_offload,
                "trainer.critic_warmup": args.critic_warmup,
                "algorithm.gamma": args.gamma,
                "algorithm.lam": args.lam,
            }
        )
    return [f"{key}={hydra_value(value)}" for key, value in o.items()] + list(args.verl_overrides)


# --- validation against the pinned verl ----------------------------------------------------------------------------


CONFIG_ENV = ".venv-verl-config"
CONFIG_PYTHON_VAR = "MATHFORGE_VERL_CONFIG_PYTHON"


class ComposedConfig(dict):
    """verl's composed config as plain containers from the config environment, read like a DictConfig
    (``config.trainer.nnodes``); a missing key is an AttributeError."""

    def __getattr__(self, name):
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return ComposedConfig(value) if isinstance(value, dict) else value


def config_python() -> Path:
    """The Python of the config environment: ``$MATHFORGE_VERL_CONFIG_PYTHON``, else
    ``.venv-verl-config/bin/python`` in the checkout (an editable install), else in the working directory."""
    if os.environ.get(CONFIG_PYTHON_VAR):
        return Path(os.environ[CONFIG_PYTHON_VAR])
    checkout = Path(__file__).resolve().parents[3]
    root = checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()
    return root / CONFIG_ENV / "bin" / "python"


def compose(overrides: list[str]):
    """verl's ``ppo_trainer`` config with ``overrides``, composed by Hydra as ``main_ppo`` composes it (a
    misspelled key is a UserError naming it).

    Where Hydra imports (the verl environment) this is done here and returns the DictConfig that verl's
    ``validate_config`` takes. Elsewhere (the main environment, which must keep Hydra and its antlr4 4.9 out:
    math-verify's LaTeX parser needs antlr4 4.13) the config environment composes it in a subprocess
    (``mathforge.verl.compose_config``) and this returns a :class:`ComposedConfig`."""
    if importlib.util.find_spec("hydra") is not None:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            return compose_config.compose(overrides, VERL_VERSION)
        except (HydraException, OmegaConfBaseException) as err:
            raise UserError(
                f"verl {VERL_VERSION} rejects the overrides: {str(err).splitlines()[0]}"
            ) from None
        except LookupError as err:
            raise UserError(str(err)) from None
    python = config_python()
    if not python.is_file():
        raise UserError(
            f"no verl config environment at {python.parent.parent} (Hydra + verl {VERL_VERSION} to check "
            f"overrides): run `make venv-verl-config` (or set {CONFIG_PYTHON_VAR})"
        )
    request = json.dumps({"overrides": list(overrides), "verl_version": VERL_VERSION})
    # -I: the config environment sees none of this process's PYTHONPATH or user site
    try:
        done = subprocess.run(
            [str(python), "-I", compose_config.__file__],
            input=request,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        raise UserError(
            f"{python} did not compose verl's config in 300 s: is the machine overloaded?"
        ) from None
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(
            f"the verl config environment failed ({tail}): rebuild it with `make venv-verl-config`"
        ) from None
    if "error" in answer:
        raise UserError(answer["error"])
    return ComposedConfig(answer["config"])


def validate_with_verl(config) -> bool:
    """verl's own ``validate_config`` where verl imports whole (its environment); False where it does not."""
    try:
        from verl.trainer.ppo.utils import need_critic, need_reference_policy
        from verl.utils.config import validate_config
    except ImportError:
        return False
    try:
        validate_config(
            config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
        )
    except (AssertionError, ValueError) as err:
        raise UserError(f"verl's validate_config: {err}") from None
    return True


# --- running ---------------------------------------------------------------------------------------------------


def command(args: VerlArguments, overrides: list[str]) -> list[str]:
    """``python -m verl.trainer.main_ppo ...``, or its ``ray job submit`` on a cluster (the job runs the same
    ``verl_python``, by absolute path: every node has the checkout and .venv-verl at the same place)."""
    main = [os.path.abspath(args.verl_python), "-m", "verl.trainer.main_ppo", *overrides]
    if args.ray_address:
        ray = str(Path(args.verl_python).with_name("ray"))
        return [ray, "job", "submit", "--address", args.ray_address, "--", *main]
    return main


def last_checkpoint(checkpoints: Path) -> Path | None:
    """``global_step_N/actor`` of verl's tracker file (``latest_checkpointed_iteration.txt``)."""
    tracker = checkpoints / "latest_checkpointed_iteration.txt"
    if not tracker.is_file():
        return None
    step = int(tracker.read_text().strip())
    actor = checkpoints / f"global_step_{step}" / "actor"
    return actor if actor.is_dir() else None


def merge_command(args: VerlArguments, actor_dir: Path) -> list[str]:
    return [
        args.verl_python, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
        "--local_dir", str(actor_dir), "--target_dir", str(Path(args.output_dir).resolve()),
    ]  # fmt: skip


def export_data(args: VerlArguments) -> None:
    from mathforge.verl.export import export

    p = paths(args)
    splits = [(args.dataset_train_split, p["train"], args.max_train_samples)]
    if args.dataset_test_split:
        splits.append((args.dataset_test_split, p["test"], None))
    for split, path, limit in splits:
        export(
            args.dataset_name,
            path,
            split=split,
            dataset_config=args.dataset_config,
            problem_column=args.problem_column,
            answer_column=args.answer_column,
            max_problems=limit,
            system_prompt=args.system_prompt,
        )


def run(args: VerlArguments, loop: StepLoopConfig, reward: RewardArguments) -> list[str]:
    """Check, then print (dry run) or export the data, train with verl and merge. Returns the overrides."""
    check(args, loop, reward)
    overrides = build_overrides(args, loop, reward)
    cmd = command(args, overrides)
    if args.dry_run:
        print(shlex.join(cmd[: cmd.index("verl.trainer.main_ppo") + 1]) + " \\")
        print(" \\\n".join(f"    {shlex.quote(o)}" for o in overrides))
        config = compose(overrides)
        verified = validate_with_verl(config)
        critic = "with a critic" if args.algorithm == "ppo" else "no critic"
        how = (
            "composed and validate_config passed"
            if verified
            else "composed with Hydra (validate_config: in .venv-verl)"
        )
        print(
            f"dry run: {len(overrides)} overrides, {args.algorithm} ({critic}), {how} against verl {VERL_VERSION}"
        )
        return overrides
    if not args.ray_address and not Path(args.verl_python).is_file():
        raise UserError(
            f"no verl environment at {args.verl_python}: run `make venv-verl` (or set verl_python)"
        )
    compose(overrides)  # a bad key fails here, before data is written or GPUs are taken
    import yaml

    p = paths(args)
    export_data(args)
    p["agent_loops"].write_text(yaml.safe_dump(agent_loop_entries(loop), sort_keys=False))
    print(shlex.join(cmd), flush=True)
    if subprocess.run(cmd).returncode:
        raise UserError(
            f"verl training failed (see its log above); checkpoints, if any, are in {p['checkpoints']}"
        )
    if args.merge:
        actor = last_checkpoint(p["checkpoints"])
        if actor is None:
            raise UserError(f"verl wrote no checkpoint under {p['checkpoints']} to merge")
        if subprocess.run(merge_command(args, actor)).returncode:
            raise UserError(f"verl's model merger failed on {actor}")
        save_yaml(to_dict(args, loop, reward), Path(args.output_dir) / "recipe.yaml")
        print(f"merged {actor} into {args.output_dir} (a Hugging Face folder for mathforge eval / push)")
    return overrides


def from_recipe(
    path: str | os.PathLike, **overrides
) -> tuple[VerlArguments, StepLoopConfig, RewardArguments]:
    """The recipe's three dataclasses without TRL's parser (which the verl environment lacks); keys as in YAML."""
    data = {**load_yaml(path), **overrides}
    data.pop("env", None)
    out, known = [], set()
    for cls in (VerlArguments, StepLoopConfig, RewardArguments):
        names = {f.name for f in dataclasses.fields(cls)}
        known |= names
        out.append(cls(**{k: v for k, v in data.items() if k in names}))
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown key '{unknown[0]}' in {path}")
    return tuple(out)


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args, loop, reward = parse_config(
        [VerlArguments, StepLoopConfig, RewardArguments], argv, prog="mathforge rl"
    )
    return run(args, loop, reward)


__all__ = ["VerlArguments", "build_overrides", "check", "compose", "from_recipe", "main", "run", "wants_verl"]


if __name__ == "__main__":
    from mathforge.cli import run_main

    sys.exit(run_main(main, sys.argv[1:], "mathforge rl"))
