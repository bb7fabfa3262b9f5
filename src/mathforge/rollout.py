"""The one step loop: expand partial solutions by one step, executor in the loop, token-exact.

Every caller that writes step-format solutions goes through :func:`expand` (or its two halves
:func:`propose` and :func:`settle`): MCTS data synthesis and inference search, step beam search, best-of-N,
majority vote, evaluation and RL rollouts. One call sends every partial solution to the generator at once
(as token ids), stopped at the end of a step or the answer; each step's code then runs in the executor on
top of its parent's state, and the system appends the real output.

A :class:`Trajectory` is its prompt's token ids followed by :class:`Segment` s: each chunk the model
wrote, exactly as sampled (its token ids from the generator and their decoded text, the stop string and
whatever else its last token held, e.g. the newline in Qwen2's ``>\\n``), and what the system appended
(``\\n`` only where the chunk did not end its line, then the ``<output>`` block; a newline after the
answer). The model continues exactly those ids, RL trains on exactly those ids, and SFT, the PPM and
the reports read exactly that text: nothing is re-rendered or re-tokenized along the way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mathforge import steps
from mathforge.generation import Completion, SamplingConfig

END_REASONS = ("answer", "max_steps", "code_errors", "invalid", "length")


@dataclass
class Segment:
    """A piece of a solution: its text, its token ids, and whether the model wrote it."""

    text: str
    ids: list[int]
    by_model: bool


@dataclass
class Trajectory:
    """A partial or finished solution: the prompt's ids, then the segments written and appended."""

    prompt: str
    prompt_ids: list[int]
    segments: list[Segment] = field(default_factory=list)
    steps: list[steps.Step] = field(default_factory=list)
    answer: str | None = None
    """Content of the ``<answer>`` block, once written."""
    end: str | None = None
    """None while it can go on; else one of :data:`END_REASONS`."""
    num_tokens: int = 0
    """Tokens the model generated for this trajectory."""
    state: object = field(default=None, repr=False)
    """The executor state after its last step (None before the first step, or once ended)."""
    kind: str = "root"
    """What the last chunk was: root (none yet), step, answer or invalid."""
    samples: list[Completion] = field(default_factory=list, repr=False)
    """The generator's completions that gave the last chunk (several when identical samples merged)."""

    @property
    def completion(self) -> str:
        """The solution text: the model's chunks as written, each step followed by the executor's output."""
        return "".join(s.text for s in self.segments)

    @property
    def text(self) -> str:
        """Prompt + completion: what a PPM scores and what the model continued."""
        return self.prompt + self.completion

    @property
    def ids(self) -> list[int]:
        """The token ids the model continues: the prompt's, then every segment's."""
        return self.prompt_ids + self.completion_ids

    @property
    def completion_ids(self) -> list[int]:
        return [i for s in self.segments for i in s.ids]

    @property
    def env_mask(self) -> list[int]:
        """Per completion token: 1 if the model sampled it, 0 if the system appended it."""
        return [int(s.by_model) for s in self.segments for _ in s.ids]

    @property
    def code_errors(self) -> int:
        return sum(1 for s in self.steps if s.error)

    @property
    def last_chunk(self) -> str:
        """The raw text of the model's last chunk ("" before any)."""
        return next((s.text for s in reversed(self.segments) if s.by_model), "")

    def branch(self) -> Trajectory:
        """A copy that shares the segments so far and can grow on its own."""
        return dataclasses.replace(
            self, segments=list(self.segments), steps=list(self.steps), state=None, samples=[]
        )


def start(prompts: list[str], tokenizer, prompt_ids: list[list[int]] | None = None) -> list[Trajectory]:
    """Empty trajectories for prompt strings (tokenized once here, or given as ``prompt_ids``)."""
    if prompt_ids is None:
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    return [Trajectory(p, list(ids)) for p, ids in zip(prompts, prompt_ids)]


def merge_key(kind: str, body: str, text: str) -> str:
    """Samples of one parent with the same key become one child: a step or an answer in canonical form,
    an invalid chunk by its exact text."""
    return steps.normalize_chunk(kind, body) if kind != "invalid" else "invalid:" + text


@dataclass
class Proposal:
    """Sampled children of some parents, waiting for their code to run (see :func:`propose`)."""

    parents: list[Trajectory]
    children: list[list[Trajectory]]
    """Per parent, its children in order of first sampling."""
    tokenizer: object

    @property
    def to_run(self) -> list[tuple[Trajectory, Trajectory]]:
        """(parent, child) of every step child, in a fixed order."""
        return [(p, c) for p, kids in zip(self.parents, self.children) for c in kids if c.kind == "step"]

    @property
    def jobs(self) -> list[tuple[object, str]]:
        """``executor.run_many`` jobs: each step's code on its parent's state."""
        return [(parent.state, child.steps[-1].code) for parent, child in self.to_run]


def propose(parents: list[Trajectory], generator, sampling: SamplingConfig, merge: bool = False) -> Proposal:
    """One generator call: ``sampling.n`` chunks for every parent, stopped at a step's or the answer's end.

    Answers and invalid chunks end their child here; steps wait for :func:`settle`. ``merge``: identical
    chunks of one parent (:func:`merge_key`) become one child holding all their samples; it keeps the
    first one's text and ids."""
    sampling = dataclasses.replace(sampling, stop=list(steps.STOP_STRINGS))
    outputs = generator.generate([p.ids for p in parents], sampling) if parents else []
    children = []
    for parent, completions in zip(parents, outputs):
        kids: dict[str, Trajectory] = {}
        for i, comp in enumerate(completions):
            kind, body = steps.parse_generation(comp.text)
            key = merge_key(kind, body, comp.text) if merge else str(i)
            if key in kids:
                kids[key].samples.append(comp)
                continue
            child = parent.branch()
            child.kind, child.samples = kind, [comp]
            child.segments.append(Segment(comp.text, list(comp.token_ids), True))
            if kind == "answer":
                child.answer, child.end = body.strip(), "answer"
            elif kind == "step":
                child.steps.append(steps.Step(code=body))
            else:
                child.end = "length" if comp.finish_reason == "length" else "invalid"
            kids[key] = child
        for child in kids.values():
            child.num_tokens = parent.num_tokens + sum(c.num_tokens for c in child.samples)
        children.append(list(kids.values()))
    return Proposal(parents, children, generator.tokenizer)


def appended_text(chunk: str, step: steps.Step | None = None) -> str:
    """What the system appends after a model's ``chunk``: the newline closing its tag's line, unless the
    model's last token already held it, then after an executed ``step`` the executor's output block."""
    return ("" if chunk.endswith("\n") else "\n") + (steps.output_block(step) if step is not None else "")


def step_end(
    trajectory_steps: list[steps.Step], killed: bool, max_steps: int, max_code_errors: int
) -> str | None:
    """How a trajectory ends after its last step ran: ``code_errors`` when the step's process died (its state
    is gone) or errors exceed ``max_code_errors``, ``max_steps`` at the step limit, else None (it goes on)."""
    if killed or sum(1 for s in trajectory_steps if s.error) > max_code_errors:
        return "code_errors"
    return "max_steps" if len(trajectory_steps) >= max_steps else None


def settle(proposal: Proposal, results: list, executor, max_steps: int, max_code_errors: int) -> None:
    """Attach the executor's ``results`` (one per :attr:`Proposal.jobs`) and append what the system adds.

    A step whose process died (its state is gone), or one error more than ``max_code_errors``, ends its
    trajectory with ``code_errors``; the ``max_steps``-th step ends it with ``max_steps``. An ended child's
    state is released; parents' states are left to the caller (their children hold their own now)."""
    appended: list[tuple[Trajectory, str]] = []
    for (_, child), result in zip(proposal.to_run, results):
        step = child.steps[-1]
        step.output, step.error, child.state = result.stdout, result.error, result.state
        child.end = step_end(child.steps, result.state is None, max_steps, max_code_errors)
        if child.end is not None and child.state is not None:
            executor.release(child.state)
            child.state = None
        appended.append((child, appended_text(child.last_chunk, step)))
    for kids in proposal.children:
        appended += [(c, appended_text(c.last_chunk)) for c in kids if c.kind == "answer"]
    appended = [(c, text) for c, text in appended if text]
    if appended:
        ids = proposal.tokenizer([text for _, text in appended], add_special_tokens=False)["input_ids"]
        for (child, text), tokens in zip(appended, ids):
            child.segments.append(Segment(text, tokens, False))


def expand(
    parents: list[Trajectory],
    generator,
    executor,
    sampling: SamplingConfig,
    max_steps: int = 16,
    max_code_errors: int = 2,
    merge: bool = False,
) -> list[list[Trajectory]]:
    """Expand every parent by one step (:func:`propose`, the executor, :func:`settle`); children per parent."""
    proposal = propose(parents, generator, sampling, merge)
    jobs = proposal.jobs
    results = executor.run_many(jobs) if jobs else []
    settle(proposal, results, executor, max_steps, max_code_errors)
    return proposal.children


def rollout(
    prompts: list[str],
    generator,
    executor,
    sampling: SamplingConfig,
    max_steps: int = 16,
    max_code_errors: int = 2,
    prompt_ids: list[list[int]] | None = None,
) -> list[list[Trajectory]]:
    """``sampling.n`` complete solutions per prompt, grouped by prompt: the first call samples n chunks per
    prompt, and every trajectory then goes on with one sample per call until it ends."""
    roots = start(prompts, generator.tokenizer, prompt_ids)
    groups = expand(roots, generator, executor, sampling, max_steps, max_code_errors)
    one = dataclasses.replace(sampling, n=1)
    active = [t for group in groups for t in group if t.end is None]
    while active:
        children = expand(active, generator, executor, one, max_steps, max_code_errors)
        for parent, (child,) in zip(active, children):
            if parent.state is not None:  # the child holds its own state now
                executor.release(parent.state)
                parent.state = None
            parent.__dict__.update(child.__dict__)  # the trajectory object in ``groups`` moves on
        active = [t for t in active if t.end is None]
    return groups
