"""Every use of TRL's private members, in one place: what a TRL release can break.

TRL offers public hooks for most of what mathforge needs (``rollout_func``, ``env_mask``, reward functions,
callbacks); what it does not offer is here, and nowhere else:

* the GRPO trainer's weight-sync bookkeeping, vLLM sleep state and FSDP parameter gathering, used when the
  step rollouts sample from the policy being trained (:func:`mathforge.rl.policy_generator`);
* :class:`StepRLOOTrainer`: RLOO in TRL 1.16 has neither ``rollout_func`` nor ``env_mask``, so step rollouts
  replace its generation hook and executor-output tokens are zeroed in its sequence log-probabilities;
* :class:`RewardTrainerWithRows`: the PPM's value objective gives `RewardTrainer` other rows and columns.

A member that is missing raises :class:`TRLVersionError`, naming the supported versions, instead of an
AttributeError deep inside a training step; :func:`check` verifies the installed TRL at once (a test runs it).
"""

from __future__ import annotations

from trl import RewardTrainer, RLOOTrainer

from mathforge.errors import UserError

SUPPORTED = "trl>=1.16,<1.17"
# private methods overridden below, and private attributes read or set on TRL's objects
OVERRIDES = {
    RLOOTrainer: (
        "_generate_single_turn",
        "_calculate_rewards",
        "_generate_and_score_completions",
        "_compute_loss",
        "_get_per_token_logps_and_entropies",
    ),
    RewardTrainer: ("_prepare_dataset", "_set_signature_columns_if_needed"),
}


class TRLVersionError(UserError):
    """The installed TRL lacks a private member mathforge relies on."""


def _missing(what: str) -> TRLVersionError:
    import trl

    return TRLVersionError(
        f"the installed TRL {trl.__version__} has no {what}, which mathforge uses; install {SUPPORTED}"
    )


def private(obj, name: str):
    """``obj.<name>`` for a private TRL member, or a :class:`TRLVersionError` naming the supported versions."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise _missing(f"{type(obj).__name__}.{name}") from None


def check() -> None:
    """Raise :class:`TRLVersionError` if a private method overridden here is gone from the installed TRL."""
    for cls, names in OVERRIDES.items():
        for name in names:
            if not callable(getattr(cls, name, None)):
                raise _missing(f"{cls.__name__}.{name}")


# --- GRPO: the policy's generation state -----------------------------------------------------------------------


def sync_weights_if_stale(trainer) -> None:
    """Push the current weights to TRL's vLLM engine unless GRPO's own rollout path did at this step."""
    if trainer.state.global_step != private(trainer, "_last_loaded_step"):
        trainer.vllm_generation.sync_weights()
        trainer._last_loaded_step = trainer.state.global_step


def weights_sleeping(vllm_generation) -> bool:
    return private(vllm_generation, "_llm_weights_sleeping")


def set_weights_sleeping(vllm_generation) -> None:
    private(vllm_generation, "_llm_weights_sleeping")
    vllm_generation._llm_weights_sleeping = True


def summon_full_params(trainer):
    """FSDP's full parameters for generation (a no-op context without FSDP), as GRPO's own generation does."""
    return private(trainer, "_dist").summon_full_params(trainer.model_wrapped, recurse=False)


def log_metric(trainer, name: str, value: float) -> None:
    """Log a metric with this step's training logs (GRPO's ``_log_metric``; nothing on trainers without it)."""
    log = getattr(trainer, "_log_metric", None)
    if log is not None:
        log(name, value)


def logged_completions(trainer) -> list:
    """The completions GRPO logged (its ``_logs``), for tests that read what the policy wrote."""
    return private(trainer, "_logs")["completion"]


# --- RLOO with step rollouts -----------------------------------------------------------------------------------


class StepRLOOTrainer(RLOOTrainer):
    """`RLOOTrainer` with step-format rollouts; executor output tokens are left out of the sequence log-prob.

    ``step_rollout.run(texts, prompt_ids, trainer)`` returns what GRPO's ``rollout_func`` returns
    (:class:`mathforge.rl.StepRollout`): ``completion_ids``, ``env_mask``, ``model_tokens``."""

    def __init__(self, *args, step_rollout, **kwargs):
        self.step_rollout = step_rollout
        self._env_rows = self._model_tokens = self._active_env_mask = None
        super().__init__(*args, **kwargs)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields):
        texts = self.processing_class.batch_decode(prompt_ids, skip_special_tokens=False)
        out = self.step_rollout.run(texts, prompt_ids, self)
        self._env_rows, self._model_tokens = out["env_mask"], out["model_tokens"]
        return out["completion_ids"]

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        for row, n in zip(inputs, self._model_tokens):
            row["model_tokens"] = n
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _env_mask(self, width: int):
        import torch

        rows = [row[:width] + [1] * (width - len(row)) for row in self._env_rows]  # padding: masked anyway
        return torch.tensor(rows, device=self.accelerator.device)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        output["env_mask"] = self._env_mask(output["completion_ids"].shape[1])
        self._env_rows = None
        return output

    def _compute_loss(self, model, inputs):
        self._active_env_mask = inputs.get("env_mask")
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._active_env_mask = None

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        mask = self._active_env_mask
        if mask is None and self._env_rows is not None:  # old/reference log-probs of a fresh generation
            mask = self._env_mask(logps.shape[1])
        if mask is not None:
            logps = logps * mask.to(logps.dtype)
        return logps, entropies, aux


# --- RewardTrainer with other rows -----------------------------------------------------------------------------


class RewardTrainerWithRows(RewardTrainer):
    """`RewardTrainer` whose rows a subclass prepares itself: it sets ``columns`` (what the collator gets) and
    :meth:`prepare_rows`, and logs with :meth:`log_train_metric`; model loading, PEFT, checkpoints and the
    model card stay RewardTrainer's."""

    columns: list[str] = []

    def prepare_rows(self, dataset, processing_class, args, dataset_name: str):
        raise NotImplementedError

    def log_train_metric(self, name: str, value: float) -> None:
        mode = "train" if self.model.training else "eval"
        private(self, "_metrics")[mode][name].append(value)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return self.prepare_rows(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        if private(self, "_signature_columns") is None:
            self._signature_columns = list(self.columns)
