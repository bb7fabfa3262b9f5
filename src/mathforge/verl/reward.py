r"""Our rewards as verl's custom reward function (``reward.custom_reward_function`` in verl 0.9.1).

verl's reward manager (``naive``) calls, once per rollout, from a thread of its event loop's executor::

    compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=..., **reward_kwargs)

``solution_str`` is the whole response decoded without special tokens (the model's steps, the executor's
``<output>`` blocks and the answer); ``extra_info`` is the parquet row's ``extra_info`` updated with the
agent loop's ``extra_fields`` (:mod:`mathforge.verl.agent_loop` puts ``rollout_end`` and ``model_tokens``
there); ``reward_kwargs`` come from ``reward.custom_reward_function.reward_kwargs`` (the launcher writes
``reward_funcs``, ``reward_weights`` and the :class:`mathforge.rewards.RewardArguments` fields).

The score is ``sum(weight * term)`` over ``reward_funcs`` with the registry's formulas
(:mod:`mathforge.rewards`): ``accuracy``, ``format``, ``cosine``, ``soft_overlong``, and ``ppm`` folded to
one scalar (min, mean or last of the step-prefix scores, ``ppm_aggregation``): verl's agent-loop path takes
one reward per trajectory, not one per step. A term that does not apply (correctness unknown: the gold has no
parseable answer, or grading timed out) adds nothing, as TRL skips a None reward: an unparseable gold is never
a reward of 1. Group rewards (``kimi_length``) and ``ai_feedback`` are not available here (verl scores one
rollout at a time); the launcher refuses them.

Threads: correctness goes through :class:`mathforge.grader.Grader`, which runs math-verify in worker
subprocesses with their own alarm, so no signal handler is touched in the calling thread (math-verify's own
``signal.alarm`` timeout works only in a main thread). One grader per process, shared by all threads.

Never raises: any failure gives score 0.0 and ``reward_error`` 1.0, with a warning. Every result has the same
keys (verl stacks them per key into ``reward_extra_info``): ``score``, ``acc``, one per configured term,
``gold_unparseable``, ``answered`` and ``reward_error``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import fields

from mathforge import rewards
from mathforge.rewards import RewardArguments

logger = logging.getLogger(__name__)

TERMS = ("accuracy", "format", "cosine", "soft_overlong", "ppm")
"""Reward names available on the verl backend (a subset of :data:`mathforge.rewards.REWARDS`)."""
DEFAULT_REWARDS = ("accuracy", "format")

_lock = threading.Lock()
_graders: dict[float, object] = {}
_scorers: dict[tuple, object] = {}
_ARG_NAMES = {f.name for f in fields(RewardArguments)}


def _grader(timeout: float):
    from mathforge.grader import Grader

    with _lock:
        if timeout not in _graders:
            _graders[timeout] = Grader(timeout=timeout, workers=2)
        return _graders[timeout]


def _ppm(args: RewardArguments):
    """One PPM scorer per process (``mathforge.ppm.load_scorer``), its calls serialized by a lock."""
    key = (args.ppm_path, args.ppm_batch_size)
    with _lock:
        if key not in _scorers:
            from mathforge.ppm import load_scorer

            scorer = load_scorer(args.ppm_path, batch_size=args.ppm_batch_size)
            scorer_lock = threading.Lock()

            def locked(texts, scorer=scorer, scorer_lock=scorer_lock):
                with scorer_lock:
                    return scorer(texts)

            locked.tokenizer = scorer.tokenizer
            _scorers[key] = locked
        return _scorers[key]


def reward_arguments(kwargs: dict) -> RewardArguments:
    """The :class:`RewardArguments` fields found in ``kwargs`` (others keep their defaults)."""
    return RewardArguments(**{k: v for k, v in kwargs.items() if k in _ARG_NAMES})


def _length(solution: str, extra_info: dict, unit: str) -> int:
    """Length the model wrote: the agent loop's token count, else (or in chars) the text without outputs."""
    if unit == "tokens" and extra_info.get("model_tokens") is not None:
        return int(extra_info["model_tokens"])
    return len(rewards.model_text(solution))


def _prompt_messages(extra_info: dict) -> list[dict]:
    messages = (
        [{"role": "system", "content": extra_info["system_prompt"]}]
        if extra_info.get("system_prompt")
        else []
    )
    return messages + [{"role": "user", "content": str(extra_info.get("problem", ""))}]


def score_terms(solution: str, gold: str, extra_info: dict, names, args: RewardArguments) -> dict:
    """Each term's value (None: does not apply) plus ``correct`` (True/False/None) for one rollout."""
    end = extra_info.get("rollout_end")
    graded = rewards.graded_text(solution) if end in (None, "answer") else ""
    correct = _grader(args.grade_timeout_s).grade(graded, str(gold))
    terms: dict[str, float | None] = {}
    for name in names:
        if name == "accuracy":
            terms[name] = None if correct is None else float(correct)
        elif name == "format":
            terms[name] = float(rewards.is_well_formed(solution))
        elif name == "cosine":
            length = _length(solution, extra_info, args.length_unit)
            terms[name] = (
                None
                if correct is None
                else rewards.cosine_scaled(
                    correct,
                    length,
                    args.cosine_max_len,
                    args.cosine_min_value_wrong,
                    args.cosine_max_value_wrong,
                    args.cosine_min_value_correct,
                    args.cosine_max_value_correct,
                )
            )
        elif name == "soft_overlong":
            length = _length(solution, extra_info, args.length_unit)
            terms[name] = rewards.soft_overlong(length, args.overlong_max_len, args.overlong_buffer)
        elif name == "ppm":
            scorer = _ppm(args)
            reward = rewards.PPMReward(
                scorer,
                lambda messages, scorer=scorer: scorer.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                ),
                args.ppm_aggregation,
            )
            terms[name] = reward([_prompt_messages(extra_info)], [solution])[0]
        else:
            raise ValueError(f"reward '{name}' is not available on the verl backend (choose from {TERMS})")
    return {"correct": correct, "terms": terms}


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl's custom reward function (see the module docstring): a dict with ``score`` and per-term values.

    kwargs: ``reward_funcs`` (names from :data:`TERMS`, default accuracy + format), ``reward_weights`` (one per
    name, default 1.0 each) and any :class:`mathforge.rewards.RewardArguments` field.
    """
    names = list(kwargs.get("reward_funcs") or DEFAULT_REWARDS)
    out = {"score": 0.0, "acc": 0.0, **{n: 0.0 for n in names}}
    out.update(gold_unparseable=0.0, answered=0.0, reward_error=0.0)
    try:
        weights = list(kwargs.get("reward_weights") or [1.0] * len(names))
        if len(weights) != len(names):
            raise ValueError(f"{len(weights)} reward_weights for {len(names)} reward_funcs")
        info = dict(extra_info or {})
        solution = solution_str if isinstance(solution_str, str) else ""
        result = score_terms(
            solution, "" if ground_truth is None else ground_truth, info, names, reward_arguments(kwargs)
        )
        correct, terms = result["correct"], result["terms"]
        total = 0.0
        for name, weight in zip(names, weights):
            value = terms[name]
            if value is not None:
                out[name] = float(value)
                total += float(weight) * float(value)
        out["score"] = total
        out["acc"] = float(correct is True)
        out["gold_unparseable"] = float(correct is None)
        out["answered"] = float(
            info.get("rollout_end", "answer") == "answer" and bool(rewards.graded_text(solution))
        )
    except Exception as err:  # a reward worker must go on: this rollout scores 0 and is counted
        logger.warning("mathforge reward failed on one rollout (%s: %s); score 0", type(err).__name__, err)
        out = {key: 0.0 for key in out}
        out["reward_error"] = 1.0
    return out


__all__ = ["DEFAULT_REWARDS", "TERMS", "compute_score", "reward_arguments", "score_terms"]
