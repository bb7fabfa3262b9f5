"""MCTS over code-augmented steps (rStar-Math, AlphaMath): one tree per problem, many trees batched.

    mathforge search --config recipes/tiny/search/config_round1.yaml [--num_rollouts 16 ...]

**A rollout** walks from the root, choosing among existing children by UCT
(``Q + c sqrt(ln N_parent / N)``, c = 2) or PUCT (``Q + c P sqrt(N_parent) / (1 + N)``, c = 1.25, P =
the step prior). At a node with no children it *expands* it: k candidate next chunks are sampled (one
prompt, n = k), each step's code runs in the executor on top of the node's state, each answer is
evaluated; then the walk goes on into one of the new children, until it reaches a terminal node,
whose reward is backed up the path (N += 1, W += reward on every node; Q = W / N). So a parent's N is
the sum of its children's N plus its own terminal visits, and the root's N is the number of rollouts.

**Batching.** Up to ``batch_problems`` trees are searched together, each with one walk in flight. A
*search step* advances every walk until it needs an expansion, then sends the pending expansions of
all trees in ONE generator call, ONE ``executor.run_many`` (each step on its parent node's state)
and one batch of answer evaluations (and one PPM call). A finished tree leaves and the next problem
takes its place, so the batch stays full. With ``pipeline`` (the default) the batch is two halves
that take turns: one half's code runs in the executor's processes while the generator samples the
other half's candidates, so that on a CPU neither waits for the other.

**The step loop.** Expansion is :mod:`mathforge.rollout`'s ``propose`` (one generator call, token ids
in and out) and ``settle`` (outputs appended): every node holds the solution up to it exactly as the
model wrote it plus what the system appended, which is what the policy continues, the PPM scores and
the tree file records (``written``, ``appended``).

**Children.** Sampled chunks with the same normalized text become one child (``count`` copies; the
first sample's text is the child's). The
prior P is the softmax over the k samples' mean token log-probabilities, summed over merged copies
(PUCT); without log-probs it is the sampled frequency (used by UCT only to order unvisited
children). A chunk that is neither a complete step nor an answer becomes an ``invalid`` terminal
child (reward -1): it is a real sample of the policy, so it keeps its share of the prior mass.
Terminal reasons, reward -1 unless noted: ``correct`` (+1, the grader accepts the answer), ``wrong``,
``too_deep`` (a step at depth ``max_depth``: no room left for an answer), ``code_errors`` (more than
``max_code_errors`` failing steps on the path, or a step whose process died), ``invalid``; at
inference (no gold answer) answers end as ``answer`` with the scorer's value as reward.

**Values.** Round 1: Q comes from terminal rewards only (an unvisited node has Q 0; a terminal node's
Q is its reward). With a PPM (``scorer(texts) -> values in [-1, 1]``), a new non-terminal node's PPM
score v0 counts as one virtual visit: ``Q = (v0 + W) / (1 + N)``. N counts real visits only (so the
N invariant holds), Q stays in [-1, 1], and the PPM's say fades as real rollouts come back.

**Executor states.** A node holds the executor state after its step until it is expanded (its
children then hold their own) or becomes terminal; everything left is released when the tree is done.

**Data parallel.** ``accelerate launch --num_processes N -m mathforge.search ...`` (any number of nodes)
runs N copies; copy r (global rank) searches the problems at positions r, r+N, r+2N, ... of the whole
problem list (ids deduplicated), with its own GPUs (``tensor_parallel_size`` each), vLLM engine, PPM and
executor, and writes its own file ``<output_file stem>.rank{r}-of-{N}.jsonl`` next to ``output_file``.
Every copy skips the problems already in ``output_file`` or in any shard file beside it (whatever N
wrote them), so each resumes on its own and a re-run with another N never searches a problem twice.
:func:`tree_files` / :func:`read_tree_set` read a run back (``mathforge extract`` does).

**Output**: one JSON line per finished tree, appended with flush + fsync; a restarted run skips the
ids already in the file and drops a torn last line. Schema::

    {"id", "problem", "answer" (gold), "prompt", "solved", "num_rollouts", "num_nodes", "tokens",
     "seconds", "config" (the SearchConfig as a dict),
     "nodes": [{"id", "parent" (null for the root), "kind" (root|step|answer|invalid), "text" (code,
                answer text, or the raw invalid chunk), "depth", "output", "error", "N", "Q", "prior",
                "count", "value0" (PPM score or null), "terminal" (null or a reason above), "reward",
                "written" (the chunk exactly as sampled), "appended" (what the system added after it:
                the line end and the output block)}]}

Node ids are list positions, and a parent always comes before its children.
"""

from __future__ import annotations

import glob
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from mathforge import steps
from mathforge.cluster import Shard, start_shard
from mathforge.config import parse_config, resolve
from mathforge.data.loading import DataArguments, load_from_args
from mathforge.errors import UserError
from mathforge.generation import DTYPE_HELP, SamplingConfig
from mathforge.rollout import Proposal, Trajectory, propose, settle

WRONG_REASONS = ("wrong", "too_deep", "code_errors")  # -1 leaves that are real solution attempts
Scorer = Callable[[list[str]], list[float]]


@dataclass
class SearchConfig:
    """MCTS data synthesis: the model, the search shape and where the trees go."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Policy model folder or Hub id."})
    backend: str = field(
        default="transformers", metadata={"help": "Generation backend: vllm or transformers."}
    )
    dtype: str = field(default="auto", metadata={"help": DTYPE_HELP})
    ppm_path: str | None = field(
        default=None,
        metadata={"help": "PPM for initial node values (round 2+); None: terminal rewards only."},
    )
    num_rollouts: int = field(
        default=8, metadata={"help": "Rollouts per problem (rStar: 8 in round 1, 16 later)."}
    )
    num_candidates: int = field(default=5, metadata={"help": "k: chunks sampled per expansion."})
    c: float | None = field(
        default=None, metadata={"help": "Exploration constant; None: 2 (uct) or 1.25 (puct)."}
    )
    selection: str = field(default="uct", metadata={"help": "uct, or puct (uses the step prior)."})
    max_depth: int = field(default=16, metadata={"help": "Most chunks (steps + answer) in one trajectory."})
    max_code_errors: int = field(default=2, metadata={"help": "More failing steps than this on a path: -1."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for candidates."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling for candidates."})
    max_new_tokens: int = field(default=256, metadata={"help": "Token limit of one chunk."})
    batch_problems: int = field(default=64, metadata={"help": "Trees searched together."})
    pipeline: bool = field(
        default=True,
        metadata={
            "help": "Two halves of the batch take turns, so that one half's code runs in the executor "
            "while the generator samples for the other (see run_search)."
        },
    )
    output_file: str | None = field(default=None, metadata={"help": "Tree JSONL file (appended; resumable)."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling and tie-breaking."})
    system_prompt: str | None = field(default=None, metadata={"help": "System message (None: none)."})
    exec_timeout_s: float = field(default=5.0, metadata={"help": "Wall-clock limit of one code step."})
    exec_max_output_chars: int = field(
        default=steps.MAX_OUTPUT_CHARS,
        metadata={
            "help": "A step's printed output beyond this is cut (with a marker), as in RL and evaluation."
        },
    )
    exec_workers: int | None = field(
        default=None,
        metadata={
            "help": "Code steps run at once. None: 4 per CPU (a step mostly waits on forks and sockets, "
            "so more in flight than cores keeps the cores busy), shared by the copies on one node."
        },
    )
    gpu_memory_utilization: float | None = field(
        default=None,
        metadata={
            "help": "vLLM: fraction of the GPU for weights and KV cache. None: 0.9, or 0.6 when the PPM "
            "runs on the same GPU with transformers (it needs room for its weights and activations)."
        },
    )
    tensor_parallel_size: int = field(
        default=1, metadata={"help": "vLLM: GPUs per engine (each data-parallel copy takes this many)."}
    )
    max_model_len: int | None = field(
        default=None, metadata={"help": "vLLM: longest prompt + chunk in tokens. None: the model's."}
    )
    ppm_device: str | None = field(
        default=None,
        metadata={
            "help": "Where the transformers PPM runs: cuda, cuda:1, cpu, ... None: this copy's first GPU "
            "(with the policy), else cpu. With tensor_parallel_size 1 and spare GPUs, cuda:1 gives it a GPU "
            "of its own (set CUDA_VISIBLE_DEVICES or tensor_parallel_size accordingly)."
        },
    )
    ppm_backend: str = field(
        default="transformers",
        metadata={
            "help": "PPM scorer: transformers (AutoModelForSequenceClassification), or vllm (vLLM's pooling "
            "runner: batched prefill, no padding; a second engine with its own gpu memory share)."
        },
    )
    ppm_gpu_memory_utilization: float = field(
        default=0.2, metadata={"help": "ppm_backend vllm: the PPM engine's fraction of the GPU."}
    )

    def __post_init__(self):
        if self.selection not in ("uct", "puct"):
            raise ValueError(f"selection must be uct or puct, not {self.selection!r}")
        for name in ("num_rollouts", "num_candidates", "max_depth", "batch_problems"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.c is not None and self.c < 0:
            raise ValueError("c must be >= 0")
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be at least 1")
        if self.ppm_backend not in ("transformers", "vllm"):
            raise ValueError(f"ppm_backend must be transformers or vllm, not {self.ppm_backend!r}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")

    @property
    def exploration(self) -> float:
        return self.c if self.c is not None else (2.0 if self.selection == "uct" else 1.25)


# --- trees ---------------------------------------------------------------------------------------------


@dataclass
class Node:
    id: int
    parent: int | None
    kind: str  # root | step | answer | invalid
    text: str
    depth: int
    prior: float = 1.0
    count: int = 1
    output: str | None = None
    error: str | None = None
    code_errors: int = 0  # failing steps on the path to here, this one included
    terminal: str | None = None
    reward: float | None = None
    value0: float | None = None
    N: int = 0
    W: float = 0.0
    children: list[int] = field(default_factory=list)
    first_segment: int = 0
    """Where this node's own segments start in ``traj.segments`` (its parent's count)."""
    traj: Trajectory | None = field(default=None, repr=False)
    """The solution up to and including this node, as the step loop built it (token ids, executor state)."""

    @property
    def state(self):
        return self.traj.state if self.traj is not None else None

    @state.setter
    def state(self, value) -> None:
        self.traj.state = value

    @property
    def pieces(self) -> tuple[str, str]:
        """(what the model wrote, what the system appended after it) for this node's chunk."""
        own = self.traj.segments[self.first_segment :]
        return "".join(s.text for s in own if s.by_model), "".join(s.text for s in own if not s.by_model)

    @property
    def Q(self) -> float:
        if self.reward is not None:  # a terminal: every visit backs up the same reward
            return self.reward
        if self.value0 is not None:
            return (self.value0 + self.W) / (1 + self.N)
        return self.W / self.N if self.N else 0.0

    def to_json(self) -> dict:
        keys = ("id", "parent", "kind", "text", "depth", "output", "error", "N", "count", "value0")
        out = {k: getattr(self, k) for k in keys}
        out.update(Q=round(self.Q, 6), prior=round(self.prior, 6), terminal=self.terminal, reward=self.reward)
        if self.traj is not None:
            out["written"], out["appended"] = self.pieces
        return out


def render_chunk(kind: str, text: str, output: str | None = None, error: str | None = None) -> str:
    """The canonical text of a node of a tree file written before nodes kept ``written``/``appended``."""
    if kind == "step":
        return steps.render_solution([steps.Step(text, output, error)])
    if kind == "answer":
        return steps.render_answer(text)
    return text  # the root (empty) or an invalid chunk


def node_text(node: dict) -> str:
    """A tree-file node's chunk as it appears in its solution: what the model wrote and the system appended."""
    if "written" in node:
        return node["written"] + node["appended"]
    return render_chunk(node["kind"], node["text"], node["output"], node["error"])


class Tree:
    """The search tree of one problem, with its walk in flight."""

    def __init__(
        self,
        id: str,
        prompt: str,
        config: SearchConfig,
        problem: str = "",
        gold: str | None = None,
        prompt_ids: list[int] | None = None,
    ):
        """``prompt_ids``: the prompt's token ids (None: tokenized by the generator's tokenizer when first
        expanded)."""
        self.id, self.prompt, self.problem, self.gold, self.config = id, prompt, problem, gold, config
        root = Trajectory(prompt, prompt_ids) if prompt_ids is not None else Trajectory(prompt, None)
        self.nodes = [Node(0, None, "root", "", 0, traj=root)]
        self.path = [0]  # the walk in flight, from the root
        self.pending: int | None = None  # node waiting for its expansion
        self.rollouts = 0
        self.tokens = 0
        self.started = time.perf_counter()
        self.rng = random.Random(f"{config.seed}:{id}")

    @property
    def done(self) -> bool:
        return self.rollouts >= self.config.num_rollouts

    @property
    def solved(self) -> bool:
        return any(n.terminal == "correct" for n in self.nodes)

    def trajectory(self, node_id: int) -> list[Node]:
        """Nodes from the root's child down to ``node_id``."""
        out = []
        while node_id:
            out.append(self.nodes[node_id])
            node_id = self.nodes[node_id].parent
        return out[::-1]

    def text(self, node_id: int) -> str:
        """Prompt + the solution so far, up to and including the node (what the policy and PPM see)."""
        return self.nodes[node_id].traj.text

    def advance(self) -> None:
        """Walk (and back up finished rollouts) until an expansion is needed or the tree is done."""
        while self.pending is None and not self.done:
            node = self.nodes[self.path[-1]]
            if node.terminal is not None:
                for i in self.path:
                    self.nodes[i].N += 1
                    self.nodes[i].W += node.reward
                self.rollouts += 1
                self.path = [0]
            elif not node.children:
                self.pending = node.id
            else:
                self.path.append(self.select(node).id)

    def select(self, node: Node) -> Node:
        c, children = self.config.exploration, [self.nodes[i] for i in node.children]
        if self.config.selection == "puct":
            explore = c * math.sqrt(max(node.N, 1))
            scores = [ch.Q + explore * ch.prior / (1 + ch.N) for ch in children]
        else:
            log_n = math.log(max(node.N, 1))
            scores = [ch.Q + c * math.sqrt(log_n / ch.N) if ch.N else math.inf for ch in children]
        # ties (e.g. all unvisited): the more probable chunk first, then at random
        return max(zip(scores, children), key=lambda sc: (sc[0], sc[1].prior, self.rng.random()))[1]

    def add_child(self, parent: Node, **kwargs) -> Node:
        child = Node(len(self.nodes), parent.id, depth=parent.depth + 1, **kwargs)
        self.nodes.append(child)
        parent.children.append(child.id)
        return child

    def release_states(self, executor) -> None:
        for node in self.nodes:
            if node.state is not None:
                executor.release(node.state)
                node.state = None

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "problem": self.problem,
            "answer": self.gold,
            "prompt": self.prompt,
            "solved": self.solved,
            "num_rollouts": self.rollouts,
            "num_nodes": len(self.nodes),
            "tokens": self.tokens,
            "seconds": round(time.perf_counter() - self.started, 3),
            "config": asdict(self.config),
            "nodes": [n.to_json() for n in self.nodes],
        }


# --- one search step: expand every pending node of every tree in one batch ----------------------------------


def _priors(kids: list[Trajectory], use_logprobs: bool) -> list[float]:
    """Each child's share of its parent's k samples: by the samples' mean token log-probabilities (a
    softmax, summed over merged copies), or their count."""
    samples = [c for kid in kids for c in kid.samples]
    if use_logprobs and all(c.logprob is not None for c in samples):
        top = max(c.logprob / max(1, c.num_tokens) for c in samples)

        def weight(c):
            return math.exp(c.logprob / max(1, c.num_tokens) - top)
    else:

        def weight(c):
            return 1.0

    total = sum(weight(c) for c in samples) or 1.0
    return [sum(weight(c) for c in kid.samples) / total for kid in kids]


def grade_answers(grader) -> Callable:
    """Answer evaluation for data synthesis: +1 when the grader accepts the answer, else -1."""

    def evaluate(items: list[tuple[Tree, Node]]) -> list[tuple[float, str]]:
        verdicts = grader.grade_many([node.text for _, node in items], [tree.gold for tree, _ in items])
        return [(1.0, "correct") if v is True else (-1.0, "wrong") for v in verdicts]

    return evaluate


def score_answers(scorer: Scorer) -> Callable:
    """Answer evaluation without a gold answer (inference): the scorer's value of the whole solution."""

    def evaluate(items: list[tuple[Tree, Node]]) -> list[tuple[float, str]]:
        values = scorer([tree.text(node.id) for tree, node in items]) if items else []
        return [(max(-1.0, min(1.0, float(v))), "answer") for v in values]

    return evaluate


@dataclass
class Expansion:
    """The sampled children of the pending nodes of some trees, waiting for their code to run."""

    trees: list[Tree]
    proposal: Proposal
    to_run: list[
        tuple[Tree, Node, Node]
    ]  # (tree, parent, child) of every step child, in the proposal's order
    answers: list[tuple[Tree, Node]]
    new_nodes: int

    @property
    def jobs(self) -> list[tuple[object, str]]:
        return self.proposal.jobs


def sample_children(trees: list[Tree], generator) -> Expansion:
    """One generator call for the pending node of every tree (the step loop's :func:`propose`); the
    samples become children, identical ones merged."""
    config = trees[0].config
    sampling = SamplingConfig(
        n=config.num_candidates,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        logprobs=config.selection == "puct",
    )
    roots = [t.nodes[0].traj for t in trees if t.nodes[0].traj.prompt_ids is None]
    if roots:
        ids = generator.tokenizer([r.prompt for r in roots], add_special_tokens=False)["input_ids"]
        for root, prompt_ids in zip(roots, ids):
            root.prompt_ids = prompt_ids
    parents = {id(t): t.nodes[t.pending] for t in trees}
    trees = sorted(trees, key=lambda t: len(parents[id(t)].traj.ids))  # similar lengths together
    proposal = propose([parents[id(t)].traj for t in trees], generator, sampling, merge=True)
    to_run, answers, new = [], [], 0
    for tree, kids in zip(trees, proposal.children):
        parent = parents[id(tree)]
        tree.tokens += sum(c.num_tokens for kid in kids for c in kid.samples)
        for kid, prior in zip(kids, _priors(kids, sampling.logprobs)):
            if kid.kind == "step":
                text = kid.steps[-1].code
            else:
                text = kid.answer if kid.kind == "answer" else kid.last_chunk
            child = tree.add_child(
                parent,
                kind=kid.kind,
                text=text,
                prior=prior,
                count=len(kid.samples),
                code_errors=parent.code_errors,
                traj=kid,
                first_segment=len(parent.traj.segments),
            )
            new += 1
            if child.kind == "invalid":
                child.terminal, child.reward = "invalid", -1.0
                cut = kid.end == "length"
                child.error = (
                    "cut off at max_new_tokens" if cut else "not a complete <step> or <answer> block"
                )
            elif child.kind == "answer":
                answers.append((tree, child))
            else:
                to_run.append((tree, parent, child))
    return Expansion(trees, proposal, to_run, answers, new)


def finish_expansion(
    expansion: Expansion, results: list, executor, evaluate_answers: Callable, scorer: Scorer | None = None
) -> None:
    """Attach the executor's results, end terminals, grade answers, score new nodes, free parent states."""
    config = expansion.trees[0].config
    settle(expansion.proposal, results, executor, config.max_depth, config.max_code_errors)
    to_score = []
    for tree, _, child in expansion.to_run:
        kid = child.traj
        child.output, child.error = kid.steps[-1].output, kid.steps[-1].error
        child.code_errors = kid.code_errors
        if kid.end == "code_errors":
            child.terminal = "code_errors"
        elif kid.end == "max_steps":  # a step at depth max_depth: no room left for an answer
            child.terminal = "too_deep"
        if child.terminal is None:
            to_score.append((tree, child))
        else:
            child.reward = -1.0
    answers = expansion.answers
    for (_, child), (reward, reason) in zip(answers, evaluate_answers(answers) if answers else []):
        child.terminal, child.reward = reason, reward
    if scorer is not None and to_score:
        for (_, child), value in zip(to_score, scorer([tree.text(child.id) for tree, child in to_score])):
            child.value0 = max(-1.0, min(1.0, float(value)))
    for tree in expansion.trees:
        parent = tree.nodes[tree.pending]
        if parent.state is not None:  # its children hold their own states now
            executor.release(parent.state)
            parent.state = None
        tree.pending = None


@dataclass
class SearchStats:
    problems: int = 0
    solved: int = 0
    nodes: int = 0
    generator_calls: int = 0
    search_steps: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def coverage(self) -> float:
        return 100.0 * self.solved / max(1, self.problems)


def run_search(
    trees: Iterable[Tree],
    generator,
    executor,
    evaluate_answers: Callable,
    scorer: Scorer | None = None,
    batch_problems: int = 64,
    on_finish: Callable[[Tree], None] | None = None,
    pipeline: bool = False,
) -> SearchStats:
    """Search all trees, ``batch_problems`` at a time; ``on_finish`` gets each tree as it completes.

    ``pipeline``: the trees in flight form two halves that take turns, so that one half's code runs in
    the executor (its own processes) while the generator samples the other half's candidates: on a CPU
    the two then share the cores instead of waiting for each other. Each half is one generator call
    per search step. Only one thread ever uses the executor at a time."""
    stats, start = SearchStats(), time.perf_counter()
    queue, exhausted = iter(trees), [False]
    halves = 2 if pipeline and batch_problems > 1 else 1
    sizes = [batch_problems // halves + (1 if i < batch_problems % halves else 0) for i in range(halves)]
    groups: list[list[Tree]] = [[] for _ in range(halves)]

    def refill(g: int) -> None:
        """Advance the group's walks; finished trees leave and new problems take their places."""
        while True:
            while not exhausted[0] and len(groups[g]) < sizes[g]:
                tree = next(queue, None)
                exhausted[0] = tree is None
                if tree is not None:
                    groups[g].append(tree)
            for tree in groups[g]:
                tree.advance()
            finished = [t for t in groups[g] if t.done]
            if not finished:  # refill before expanding, so that every generator call is as full as it can be
                return
            groups[g] = [t for t in groups[g] if not t.done]
            for tree in finished:
                tree.release_states(executor)
                stats.problems += 1
                stats.solved += tree.solved
                stats.nodes += len(tree.nodes)
                stats.tokens += tree.tokens
                stats.seconds = time.perf_counter() - start
                if on_finish is not None:
                    on_finish(tree)

    def sample(g: int) -> Expansion | None:
        if not groups[g]:
            return None
        stats.generator_calls += 1
        stats.search_steps += 1
        return sample_children(groups[g], generator)

    if halves == 1:
        while True:
            refill(0)
            expansion = sample(0)
            if expansion is None:
                break
            results = executor.run_many(expansion.jobs) if expansion.to_run else []
            finish_expansion(expansion, results, executor, evaluate_answers, scorer)
    else:
        from concurrent.futures import ThreadPoolExecutor

        for g in range(halves):
            refill(g)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="search-exec") as pool:
            in_flight = None  # (group, expansion, future): code running while the other group samples
            g = 0
            while True:
                expansion = sample(g)  # the generator works while the executor runs the other group's code
                if in_flight is not None:
                    h, other, future = in_flight
                    finish_expansion(other, future.result(), executor, evaluate_answers, scorer)
                    refill(h)  # the executor is idle here: releasing states is safe
                in_flight = None
                if expansion is not None:
                    in_flight = (g, expansion, pool.submit(executor.run_many, expansion.jobs))
                elif not any(groups):
                    break
                g = 1 - g
    stats.seconds = time.perf_counter() - start
    return stats


# --- tree files ------------------------------------------------------------------------------------------


def read_trees(path: str | os.PathLike) -> list[dict]:
    """The trees in a JSONL file; a torn last line (a run killed mid-write) is skipped."""
    trees = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                trees.append(json.loads(line))
            except ValueError:
                continue  # only a torn write can produce this; the tree is searched again
    return trees


def shard_file(output_file: str | os.PathLike, rank: int, world_size: int) -> str:
    """The tree file of data-parallel copy ``rank`` of ``world_size``: ``trees.jsonl`` ->
    ``trees.rank0-of-8.jsonl``; ``output_file`` itself for a one-process run."""
    path = os.fspath(output_file)
    if world_size == 1:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}.rank{rank}-of-{world_size}{ext or '.jsonl'}"


def tree_files(output_file: str | os.PathLike) -> list[str]:
    """The files of a search run: ``output_file`` (if it exists) and every shard file beside it."""
    path = os.fspath(output_file)
    stem, ext = os.path.splitext(path)
    shards = sorted(glob.glob(f"{glob.escape(stem)}.rank*-of-*{glob.escape(ext or '.jsonl')}"))
    return ([path] if os.path.isfile(path) else []) + shards


def read_tree_set(output_file: str | os.PathLike) -> list[dict]:
    """The trees of a search run, over all its files (see :func:`tree_files`), one per id."""
    seen, trees = set(), []
    for path in tree_files(output_file):
        for tree in read_trees(path):
            if str(tree["id"]) not in seen:
                seen.add(str(tree["id"]))
                trees.append(tree)
    return trees


class TreeWriter:
    """Appends finished trees to a JSONL file, durably; knows which ids it already holds."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.done: set[str] = set()
        if os.path.exists(self.path):
            self._repair()
            self.done = {str(t["id"]) for t in read_trees(self.path)}
        self.file = open(self.path, "a")

    def _repair(self) -> None:
        """Cut a torn last line, so that the next tree starts on a line of its own."""
        with open(self.path, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                f.truncate(end)

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.done.add(str(record["id"]))

    def close(self) -> None:
        self.file.close()


# --- the `mathforge search` command ----------------------------------------------------------------------


def load_ppm(path: str, device: str | None = None, backend: str = "transformers", **vllm_kwargs) -> Scorer:
    """The PPM as a scorer: transformers on ``device`` (None: cuda when available, else cpu), or a vLLM
    pooling engine (``backend="vllm"``, ``vllm_kwargs`` for :class:`mathforge.ppm.VLLMPPMScorer`)."""
    from mathforge.ppm import VLLMPPMScorer, load_scorer

    path = resolve(path, "PPM folder")
    if backend not in ("transformers", "vllm"):
        raise UserError(f"unknown ppm_backend '{backend}' (choose from: transformers, vllm)")
    if backend == "vllm":
        return VLLMPPMScorer(path, **vllm_kwargs)
    return load_scorer(path, device=device)


def ppm_of(config) -> Scorer | None:
    """The PPM a search or evaluation config names (its ``ppm_path``, ``ppm_device``, ``ppm_backend``,
    ``ppm_gpu_memory_utilization`` and ``max_model_len``), or None when it names none."""
    if not config.ppm_path:
        return None
    return load_ppm(
        config.ppm_path,
        device=config.ppm_device,
        backend=config.ppm_backend,
        gpu_memory_utilization=config.ppm_gpu_memory_utilization,
        max_model_len=config.max_model_len,
    )


def _vllm_memory(config: SearchConfig) -> float | None:
    """vLLM's GPU share: the configured one, or room left for a transformers PPM on the same GPU."""
    import torch

    if config.gpu_memory_utilization is not None or config.backend != "vllm" or not torch.cuda.is_available():
        return config.gpu_memory_utilization
    if config.ppm_path and config.ppm_backend == "transformers":
        if config.ppm_device in (None, "cuda", "cuda:0"):
            return 0.6
    if config.ppm_path and config.ppm_backend == "vllm":
        return round(0.9 - config.ppm_gpu_memory_utilization, 3)
    return None


def search(
    config: SearchConfig,
    data: DataArguments,
    generator=None,
    executor=None,
    scorer=None,
    grader=None,
    progress: bool = True,
    shard: Shard | None = None,
) -> dict:
    """Search every problem of this copy (``shard``; None: the only copy) not yet in the run's tree files;
    returns the run's summary. A generator, executor, scorer or grader passed in is used (and not
    closed) instead of building one."""
    from tqdm.auto import tqdm

    from mathforge.executor import Executor, ExecutorConfig
    from mathforge.generation import load_generator
    from mathforge.grader import Grader

    if not config.output_file:
        raise UserError("no output file: set output_file (the tree JSONL, appended and resumable)")
    if generator is None and not config.model_name_or_path:
        raise UserError("no model: set model_name_or_path")
    shard = shard or Shard()
    problems = load_from_args(data)
    done = {str(t["id"]) for path in tree_files(config.output_file) for t in read_trees(path)}
    writer = TreeWriter(shard_file(config.output_file, shard.rank, shard.world_size))
    # positions in the whole (deduplicated) problem list pick each copy's problems, the same in every copy
    unique = {}
    for row in problems:
        unique.setdefault(str(row["id"]), row)
    mine = [row for position, row in enumerate(unique.values()) if shard.owns(position)]
    todo = [row for row in mine if str(row["id"]) not in done]
    skipped = len(mine) - len(todo)
    if generator is None:
        import torch

        torch.manual_seed(config.seed)
        extra = {}
        if config.backend == "vllm":
            extra = dict(
                seed=config.seed,
                gpu_memory_utilization=_vllm_memory(config),
                tensor_parallel_size=config.tensor_parallel_size,
                max_model_len=config.max_model_len,
            )
        generator = load_generator(config.backend, config.model_name_or_path, dtype=config.dtype, **extra)
    if scorer is None:
        scorer = ppm_of(config)
    own_executor = executor is None
    if own_executor:
        live = min(1024, max(64, config.batch_problems * config.num_candidates))
        workers = config.exec_workers or max(4, 4 * (os.cpu_count() or 1) // shard.local_world_size)
        executor = Executor(
            ExecutorConfig(
                timeout_s=config.exec_timeout_s,
                max_output_chars=config.exec_max_output_chars,
                max_states=live,
                max_workers=workers,
            )
        )
    own_grader = grader is None
    grader = grader or Grader()
    desc = "search" if shard.world_size == 1 else f"search {shard.label}"
    bar = tqdm(total=len(todo), desc=desc, unit="problem", disable=not progress)
    counts = {"done": 0, "solved": 0, "nodes": 0}
    start = time.perf_counter()

    def on_finish(tree: Tree) -> None:
        writer.write(tree.to_json())
        counts["done"] += 1
        counts["solved"] += tree.solved
        counts["nodes"] += len(tree.nodes)
        rate = counts["nodes"] / max(1e-9, time.perf_counter() - start)
        bar.set_postfix(coverage=f"{100 * counts['solved'] / counts['done']:.1f}%", nodes_s=f"{rate:.1f}")
        bar.update(1)

    def trees():
        for row in todo:
            prompt = steps.chat_prompt(generator.tokenizer, row["problem"], config.system_prompt)
            yield Tree(str(row["id"]), prompt, config, problem=row["problem"], gold=str(row["answer"]))

    try:
        stats = run_search(
            trees(),
            generator,
            executor,
            grade_answers(grader),
            scorer,
            config.batch_problems,
            on_finish,
            pipeline=config.pipeline,
        )
    finally:
        bar.close()
        writer.close()
        if own_grader:
            grader.close()
        if own_executor:
            executor.close()
    summary = {
        "problems": stats.problems,
        "skipped_already_done": skipped,
        "coverage": round(stats.coverage, 2),
        "nodes": stats.nodes,
        "generator_calls": stats.generator_calls,
        "calls_per_search_step": round(stats.generator_calls / max(1, stats.search_steps), 3),
        "tokens": stats.tokens,
        "seconds": round(stats.seconds, 2),
        "output_file": writer.path,
    }
    return summary


def config_types(recipe: dict | None = None) -> list[type]:
    """The option dataclasses `mathforge search` parses (evolve checks step recipes against them)."""
    return [SearchConfig, DataArguments]


def main(argv: list[str] | None = None) -> dict:
    config, data = parse_config(config_types(), argv, prog="mathforge search")
    shard = start_shard(gpus_per_copy=config.tensor_parallel_size)  # before anything touches CUDA
    s = search(config, data, shard=shard)
    print(
        f"searched {s['problems']} problems ({s['skipped_already_done']} already in the file): coverage "
        f"{s['coverage']:.1f}%, {s['nodes']} nodes, {s['generator_calls']} generator calls "
        f"({s['calls_per_search_step']:g} per search step), {s['tokens']} tokens, {s['seconds']:.0f}s "
        f"-> {s['output_file']}"
    )
    return s


if __name__ == "__main__":
    from mathforge.cli import run_main

    sys.exit(run_main(main, sys.argv[1:], "mathforge search"))
