"""The step format as a verl agent loop: the model writes a step, our sandboxed executor runs it, its real
``<output>`` is appended, and the model goes on, as our TRL rollouts (:mod:`mathforge.rollout`) do.

:func:`run_steps` is the loop, written against two small interfaces so that it runs without verl's server:
``generate(token_ids, sampling_params) -> Chunk`` (verl's LLM server manager, token in / token out) and an
:class:`AsyncExecutor` (our :class:`mathforge.executor.Executor`, its calls batched with ``run_many``).
:class:`StepAgentLoop` is the verl side: registered as ``mathforge_steps`` (the launcher also lists it in
``actor_rollout_ref.rollout.agent.agent_loop_config_path``, with this loop's settings as constructor kwargs).

What the policy is trained on (``response_mask`` 1) is exactly the token ids the server sampled, with their
log-probabilities; what the system adds is mask 0 (and log-prob 0): the newline after a closing tag, each
``<output>`` block, and the end-of-turn token after ``</answer>`` (generation stops at the tag). A chunk that
is not a complete block (cut at ``max_step_tokens``, or a model that starts its own ``<output>``) ends the
trajectory and stays in the response as the model's own tokens, so that its length counts and the loss pushes
it down; ``rollout_end`` then says ``length`` or ``invalid`` and the reward grades it as unanswered. Limits:
``max_solution_steps`` steps, more than ``max_code_errors`` failing steps, and the rollout's
``response_length`` tokens in all (the response is cut there, as verl's own loops do).

``extra_fields`` of each output (verl hands them to the reward function's ``extra_info``): ``rollout_end``
(answer, max_steps, code_errors, invalid, length), ``model_tokens`` (tokens the model wrote, inside the
response), ``num_steps`` and ``code_errors``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from uuid import uuid4

from mathforge import steps
from mathforge.rollout import appended_text, step_end
from mathforge.steps import MAX_OUTPUT_CHARS

logger = logging.getLogger(__name__)

AGENT_NAME = "mathforge_steps"


@dataclass
class StepLoopConfig:
    """Settings of the agent loop (the recipe keys of the same names; defaults as in `mathforge rl`)."""

    rollout_format: str = "steps"
    """steps: code executed between steps; text: one plain generation (no executor)."""
    max_solution_steps: int = 16
    """Most steps in one solution."""
    max_step_tokens: int = 256
    """Token limit of one step (one generate call)."""
    max_code_errors: int = 2
    """The trajectory stops after this many failing steps."""
    exec_timeout_s: float = 5.0
    """Wall-clock limit of one code step."""
    exec_max_output_chars: int = MAX_OUTPUT_CHARS
    """A step's printed output beyond this is cut (with a marker)."""

    def __post_init__(self):
        if self.rollout_format not in ("steps", "text"):
            raise ValueError(f"rollout_format must be steps or text, not {self.rollout_format!r}")
        if min(self.max_solution_steps, self.max_step_tokens) < 1:
            raise ValueError("max_solution_steps and max_step_tokens must be at least 1")


@dataclass
class Chunk:
    """What one generate call returned: the sampled token ids and (if asked for) their log-probabilities."""

    token_ids: list[int]
    log_probs: list[float] | None = None


@dataclass
class StepRolloutResult:
    """One trajectory in verl's terms, plus how it ended."""

    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    response_logprobs: list[float] | None = None
    end: str | None = None
    steps: list[steps.Step] = field(default_factory=list)
    answer: str | None = None
    generate_calls: int = 0

    @property
    def model_tokens(self) -> int:
        return sum(self.response_mask)

    @property
    def code_errors(self) -> int:
        return sum(1 for s in self.steps if s.error)


class AsyncExecutor:
    """Our :class:`~mathforge.executor.Executor` for coroutines: steps asked for while a batch runs are
    collected and sent together with ``run_many`` (steps of concurrent trajectories run in parallel), in a
    thread, so the event loop (verl's agent-loop worker) never blocks."""

    def __init__(self, executor):
        self.executor = executor
        self._pending: list[tuple[object, str, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    async def run(self, parent, code: str):
        future = asyncio.get_running_loop().create_future()
        self._pending.append((parent, code, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await asyncio.to_thread(self.executor.run_many, [(p, c) for p, c, _ in batch])
            except Exception as err:  # the executor itself failed: every waiting step learns it
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, _, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    async def release(self, state) -> None:
        if state is not None:
            await asyncio.to_thread(self.executor.release, state)


def end_of_turn_id(tokenizer) -> int | None:
    """The token the chat template closes an assistant turn with (else EOS), as `mathforge rl` appends it."""
    token = steps.end_of_turn_token(tokenizer)
    return tokenizer.get_vocab()[token] if token else tokenizer.eos_token_id


def _eos_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id, end_of_turn_id(tokenizer)}
    return {i for i in ids if i is not None}


async def run_steps(
    prompt_ids: list[int],
    generate,
    tokenizer,
    executor: AsyncExecutor | None,
    sampling_params: dict,
    config: StepLoopConfig,
    response_length: int,
) -> StepRolloutResult:
    """Run one trajectory (see the module docstring); ``generate`` is awaited once per step."""
    result = StepRolloutResult()
    want_logprobs = bool(sampling_params.get("logprobs"))
    logprobs: list[float] = []
    eos = _eos_ids(tokenizer)
    state = None

    def add(ids: list[int], by_model: bool, lps: list[float] | None = None) -> None:
        result.response_ids.extend(ids)
        result.response_mask.extend([int(by_model)] * len(ids))
        logprobs.extend(lps if lps is not None and len(lps) == len(ids) else [0.0] * len(ids))

    def system_text(text: str) -> None:
        add(tokenizer.encode(text, add_special_tokens=False), False)

    try:
        if config.rollout_format == "text":
            chunk = await generate(list(prompt_ids), {**sampling_params, "max_tokens": response_length})
            result.generate_calls += 1
            add(chunk.token_ids, True, chunk.log_probs)
            ended = bool(chunk.token_ids) and chunk.token_ids[-1] in eos
            result.end = "answer" if ended else "length"
        while result.end is None:
            budget = response_length - len(result.response_ids)
            if budget <= 0:
                result.end = "length"
                break
            params = {
                **sampling_params,
                "stop": list(steps.STOP_STRINGS),
                "include_stop_str_in_output": True,
                "max_tokens": min(config.max_step_tokens, budget),
            }
            chunk = await generate(list(prompt_ids) + result.response_ids, params)
            result.generate_calls += 1
            tokens = list(chunk.token_ids)
            add(tokens, True, chunk.log_probs)
            ended = bool(tokens) and tokens[-1] in eos
            text = tokenizer.decode(tokens[:-1] if ended else tokens, skip_special_tokens=False)
            kind, body = steps.parse_generation(text)
            if kind == "answer":
                result.answer, result.end = body.strip(), "answer"
                if not ended:  # generation stopped at </answer>: the system ends the line and closes the turn
                    system_text(appended_text(text))
                    add([end_of_turn_id(tokenizer)], False)
            elif kind == "step" and not ended:
                step = steps.Step(code=body)
                result.steps.append(step)
                outcome = await executor.run(state, body)
                step.output, step.error = outcome.stdout, outcome.error
                await executor.release(state)
                state = outcome.state  # after an exception too (notebook semantics); None if the process died
                system_text(appended_text(text, step))
                result.end = step_end(
                    result.steps, outcome.state is None, config.max_solution_steps, config.max_code_errors
                )
            else:
                stopped = ended or text.rstrip().endswith(tuple(steps.STOP_STRINGS))
                result.end = "invalid" if stopped else "length"
    finally:
        if executor is not None and state is not None:
            await executor.release(state)
    result.response_ids = result.response_ids[:response_length]
    result.response_mask = result.response_mask[:response_length]
    result.response_logprobs = logprobs[:response_length] if want_logprobs else None
    return result


# --- verl ------------------------------------------------------------------------------------------------------

try:  # verl's agent-loop base exists only in the verl environment (it imports torch, ray, vLLM clients)
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register
except ImportError:  # the main environment: the loop above is still importable and testable
    AgentLoopBase = None


if AgentLoopBase is not None:

    @register(AGENT_NAME)
    class StepAgentLoop(AgentLoopBase):
        """verl agent loop running :func:`run_steps` against verl's LLM server, one executor per worker process.

        Constructor kwargs beyond verl's are :class:`StepLoopConfig`'s fields (the launcher writes them into
        the agent-loop config file).
        """

        _executors: dict[tuple, AsyncExecutor] = {}

        def __init__(self, *args, name: str | None = None, **kwargs):
            settings = {k: kwargs.pop(k) for k in list(kwargs) if k in StepLoopConfig.__dataclass_fields__}
            super().__init__(*args, **kwargs)
            self.step_config = StepLoopConfig(**settings)
            self.response_length = self.rollout_config.response_length

        def executor(self) -> AsyncExecutor | None:
            if self.step_config.rollout_format != "steps":
                return None
            key = (self.step_config.exec_timeout_s, self.step_config.exec_max_output_chars)
            if key not in StepAgentLoop._executors:  # one per process, shared by its trajectories
                from mathforge.executor import Executor, ExecutorConfig

                config = ExecutorConfig(timeout_s=key[0], max_output_chars=key[1])
                StepAgentLoop._executors[key] = AsyncExecutor(Executor(config))
            return StepAgentLoop._executors[key]

        async def run(self, sampling_params, **kwargs) -> AgentLoopOutput:
            messages = list(kwargs["raw_prompt"])
            prompt_ids = await self.ct_build_initial_tokens(messages)
            request_id = uuid4().hex  # one id per trajectory: the server keeps its prefix cached

            async def generate(token_ids, params) -> Chunk:
                out = await self.server_manager.generate(
                    request_id=request_id, prompt_ids=token_ids, sampling_params=dict(params)
                )
                return Chunk(list(out.token_ids), list(out.log_probs) if out.log_probs else None)

            result = await run_steps(
                prompt_ids,
                generate,
                self.tokenizer,
                self.executor(),
                dict(sampling_params),
                self.step_config,
                self.response_length,
            )
            return AgentLoopOutput(
                prompt_ids=prompt_ids,
                response_ids=result.response_ids,
                response_mask=result.response_mask,
                response_logprobs=result.response_logprobs,
                num_turns=1 + 2 * len(result.steps) + int(result.answer is not None),
                metrics={},
                extra_fields={
                    "rollout_end": result.end,
                    "model_tokens": result.model_tokens,
                    "num_steps": len(result.steps),
                    "code_errors": result.code_errors,
                },
            )


__all__ = ["AGENT_NAME", "AsyncExecutor", "Chunk", "StepLoopConfig", "StepRolloutResult", "run_steps"]
