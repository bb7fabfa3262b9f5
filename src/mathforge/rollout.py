"""Solve problems in the step format with the executor in the loop (greedy, sampled, or n per problem).

Each round sends every unfinished trajectory to the generator in one call, stopped at the end of a
step; the step's code then runs in the executor (continuing that trajectory's state) and the real
output is appended before the next round. Evaluation, RL rollouts and the SFT checks use this; the
tree search uses the same pieces node by node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mathforge import steps
from mathforge.generation import SamplingConfig


@dataclass
class Trajectory:
    """One solution attempt: executed steps, the answer text, and how it ended."""

    prompt: str
    steps: list[steps.Step] = field(default_factory=list)
    answer: str | None = None
    num_tokens: int = 0
    end: str | None = None
    """None while running; then "answer", "max_steps", "code_errors", "invalid" or "length"."""
    tail: str = ""
    """The raw last chunk when it was not a complete block (end "invalid" or "length"): not part of the
    solution, but the model wrote it, so RL scores and trains on it."""
    written: list[str] = field(default_factory=list)
    """Each step's chunk, then the answer's, exactly as the model generated it (the stop string kept)."""
    state: object = field(default=None, repr=False)

    @property
    def completion(self) -> str:
        """The solution text (canonical blocks), with outputs that came from the executor."""
        return steps.render_solution(self.steps, self.answer)

    def segments(self) -> list[tuple[str, bool]]:
        """The trajectory as ``(text, written by the model)`` pieces: each step's chunk as generated, then
        the newline closing it and the executor's output block; then the answer's chunk and its newline.
        Joined, they are what the model continued (:attr:`context`); RL trains on exactly these tokens."""
        pieces = []
        for chunk, step in zip(self.written, self.steps):
            pieces += [(chunk, True), ("\n" + steps.output_block(step), False)]
        if self.answer is not None:
            pieces += [(self.written[-1], True), ("\n", False)]
        return pieces

    @property
    def context(self) -> str:
        """What the model continues: its steps as it wrote them, each followed by the executor's output.
        Same as :attr:`completion` unless a chunk was not in canonical form (a missing or extra newline),
        so the model is never trained on text it did not write."""
        return "".join(text for text, _ in self.segments())

    @property
    def code_errors(self) -> int:
        return sum(1 for s in self.steps if s.error)


def rollout(
    prompts: list[str],
    generator,
    executor,
    sampling: SamplingConfig,
    max_steps: int = 16,
    max_code_errors: int = 2,
) -> list[list[Trajectory]]:
    """Run `sampling.n` trajectories per prompt to the end; returns them grouped by prompt."""
    step_sampling = SamplingConfig(**{**sampling.__dict__, "stop": steps.STOP_STRINGS})
    groups = [[Trajectory(prompt=p) for _ in range(sampling.n)] for p in prompts]
    active = [t for group in groups for t in group]
    first = True
    while active:
        if first:  # one call with n samples per prompt; the trajectories branch from here
            outs = generator.generate(prompts, step_sampling)
            chunks = [c for group in outs for c in group]
            first = False
        else:
            one = SamplingConfig(**{**step_sampling.__dict__, "n": 1})
            chunks = [o[0] for o in generator.generate([t.prompt + t.context for t in active], one)]
        to_run = []
        for traj, chunk in zip(active, chunks):
            traj.num_tokens += chunk.num_tokens
            kind, body = steps.parse_generation(chunk.text)
            if kind == "answer":
                traj.answer, traj.end = body.strip(), "answer"
                traj.written.append(chunk.text)
            elif kind == "step":
                traj.steps.append(steps.Step(code=body))
                traj.written.append(chunk.text)
                to_run.append(traj)
            else:
                traj.end = "length" if chunk.finish_reason == "length" else "invalid"
                traj.tail = chunk.text
        results = executor.run_many([(t.state, t.steps[-1].code) for t in to_run]) if to_run else []
        for traj, result in zip(to_run, results):
            traj.steps[-1].output, traj.steps[-1].error = result.stdout, result.error
            if (
                result.state is not None
            ):  # a step that raised keeps what ran before the error, like a notebook
                if traj.state is not None:
                    executor.release(traj.state)
                traj.state = result.state
            if traj.code_errors > max_code_errors:
                traj.end = "code_errors"
            elif len(traj.steps) >= max_steps:
                traj.end = "max_steps"
        for traj in active:
            if traj.end is not None and traj.state is not None:
                executor.release(traj.state)
                traj.state = None
        active = [t for t in active if t.end is None]
    return groups
