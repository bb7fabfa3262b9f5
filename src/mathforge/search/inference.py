"""Inference-time search: more compute per problem than one greedy solution, one answer out.

Every function takes chat prompts (``steps.chat_prompt``), a generator and an executor (and a
``scorer(texts) -> values``, e.g. the PPM's ``load_scorer``), batches the work of all problems into
shared generator/executor calls through the one step loop of :mod:`mathforge.rollout`, and returns one
:class:`SearchAnswer` per prompt:

* :func:`mcts`: the search of :mod:`.mcts` without a gold answer: a finished solution's value is the
  scorer's score of the whole text, new steps start from their PPM score; the answer of the
  best-scored solution wins (rStar-Math).
* :func:`step_beam_search`: B1 beams, B2 samples from each, all children scored, the top B1 kept; a
  finished solution leaves the beam and takes its slot with it, so B1 solutions come out (AlphaMath).
* :func:`best_of_n`: N sampled solutions, the best-scored finished one.
* :func:`majority_vote`: N sampled solutions, the most frequent final answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from mathforge import steps
from mathforge.generation import SamplingConfig
from mathforge.rollout import Trajectory, expand, rollout, start
from mathforge.search.mcts import Scorer, SearchConfig, Tree, run_search, score_answers


@dataclass
class SearchAnswer:
    answer: str | None
    """Content of the chosen ``<answer>`` block (grade it with ``Grader``); None: nothing finished."""
    completion: str | None
    """The chosen solution, outputs from the executor."""
    score: float | None
    """Its score (scorer value, or the vote share for majority vote)."""
    tokens: int
    """Tokens generated for this problem, all candidates counted."""


def group_answers(answers: list[str | None], weights: list[float] | None = None, grader=None) -> list[list]:
    """``[first index, total weight]`` per distinct final answer, in order of appearance. Answers group
    by their final answer (the ``\\boxed{}`` content, spaces ignored) and, with a ``grader``, also by
    equivalence (``\\frac{1}{2}`` = ``0.5``). None answers are left out."""
    from mathforge.grader import extract_answer

    groups: list[list] = []  # [key, first index, total weight]
    for i, text in enumerate(answers):
        key = extract_answer(text) if text is not None else None
        if key is None:
            continue
        key = "".join(key.split())
        weight = 1.0 if weights is None else float(weights[i])
        group = next((g for g in groups if g[0] == key), None)
        if group is None and grader is not None:
            group = next((g for g in groups if grader.grade(key, g[0]) is True), None)
        if group is None:
            groups.append([key, i, weight])
        else:
            group[2] += weight
    return [g[1:] for g in groups]


def vote(
    answers: list[str | None], weights: list[float] | None = None, grader=None
) -> tuple[int, float] | None:
    """The majority rule: (index of the first answer of the group with the most weight, that group's weight);
    ties go to the group seen first. None when no answer has a final answer."""
    groups = group_answers(answers, weights, grader)
    return tuple(max(groups, key=lambda g: (g[1], -g[0]))) if groups else None


def _sample(prompts, generator, executor, n, temperature, top_p, max_new_tokens, max_steps, max_code_errors):
    """N complete solutions per prompt, executor in the loop (shared by majority vote and best-of-N)."""
    sampling = SamplingConfig(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    return rollout(prompts, generator, executor, sampling, max_steps, max_code_errors)


def majority_vote(
    prompts: list[str],
    generator,
    executor,
    n: int = 8,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    max_steps: int = 16,
    max_code_errors: int = 2,
    grader=None,
) -> list[SearchAnswer]:
    out = []
    groups = _sample(
        prompts, generator, executor, n, temperature, top_p, max_new_tokens, max_steps, max_code_errors
    )
    for group in groups:
        tokens = sum(t.num_tokens for t in group)
        winner = vote([t.answer for t in group], grader=grader)
        if winner is None:
            out.append(SearchAnswer(None, None, None, tokens))
            continue
        best, votes = winner
        out.append(SearchAnswer(group[best].answer, group[best].completion, votes / len(group), tokens))
    return out


def best_of_n(
    prompts: list[str],
    generator,
    executor,
    scorer: Scorer,
    n: int = 8,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    max_steps: int = 16,
    max_code_errors: int = 2,
) -> list[SearchAnswer]:
    groups = _sample(
        prompts, generator, executor, n, temperature, top_p, max_new_tokens, max_steps, max_code_errors
    )
    finished = [(i, t) for i, group in enumerate(groups) for t in group if t.answer is not None]
    scores = scorer([prompts[i] + t.completion for i, t in finished]) if finished else []
    best: dict[int, tuple[float, object]] = {}
    for (i, traj), score in zip(finished, scores):
        if i not in best or score > best[i][0]:
            best[i] = (float(score), traj)
    out = []
    for i, group in enumerate(groups):
        tokens = sum(t.num_tokens for t in group)
        if i in best:
            score, traj = best[i]
            out.append(SearchAnswer(traj.answer, traj.completion, score, tokens))
        else:
            out.append(SearchAnswer(None, None, None, tokens))
    return out


def step_beam_search(
    prompts: list[str],
    generator,
    executor,
    scorer: Scorer,
    beams: int = 3,
    samples: int = 4,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    max_steps: int = 16,
    max_code_errors: int = 2,
) -> list[SearchAnswer]:
    sampling = SamplingConfig(n=samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    active = [[root] for root in start(prompts, generator.tokenizer)]
    finished: list[list[Trajectory]] = [[] for _ in prompts]
    problem = {id(group[0]): i for i, group in enumerate(active)}
    tokens = [0] * len(prompts)
    scores: dict[int, float] = {}
    while any(active):
        flat = [b for group in active for b in group]
        expanded = expand(flat, generator, executor, sampling, max_steps, max_code_errors, merge=True)
        viable, seen = [], set()
        for beam, children in zip(flat, expanded):
            i = problem[id(beam)]
            tokens[i] += sum(c.num_tokens for child in children for c in child.samples)
            for child in children:
                problem[id(child)] = i
                # a child another beam of this problem already produced (same solution so far) is dropped
                key = (i, steps.render_solution(child.steps, child.answer))
                if child.end not in (None, "answer") or key in seen:
                    if child.state is not None:
                        executor.release(child.state)
                        child.state = None
                    continue
                seen.add(key)
                viable.append(child)
        for child, score in zip(viable, scorer([c.text for c in viable]) if viable else []):
            scores[id(child)] = float(score)
        active = [[] for _ in prompts]
        for child in sorted(viable, key=lambda c: -scores[id(c)]):
            i = problem[id(child)]
            if len(active[i]) + len(finished[i]) >= beams:
                if child.state is not None:
                    executor.release(child.state)
                    child.state = None
            elif child.end == "answer":
                finished[i].append(child)
            else:
                active[i].append(child)
        for beam in flat:
            if beam.state is not None:
                executor.release(beam.state)
                beam.state = None
    out = []
    for i, done in enumerate(finished):
        best = max(done, key=lambda b: scores[id(b)], default=None)
        if best is None:
            out.append(SearchAnswer(None, None, None, tokens[i]))
        else:
            out.append(SearchAnswer(best.answer, best.completion, scores[id(best)], tokens[i]))
    return out


def mcts(
    prompts: list[str], generator, executor, scorer: Scorer, config: SearchConfig | None = None
) -> list[SearchAnswer]:
    """MCTS with the scorer as the only judge; ``config`` sets the search shape (rollouts, k, c, ...)."""
    config = config or SearchConfig(num_rollouts=16, num_candidates=4, selection="puct")
    trees = [Tree(str(i), prompt, config) for i, prompt in enumerate(prompts)]
    run_search(
        trees,
        generator,
        executor,
        score_answers(scorer),
        scorer,
        config.batch_problems,
        pipeline=config.pipeline,
    )
    out = []
    for tree in trees:
        leaves = [n for n in tree.nodes if n.kind == "answer"]
        best = max(leaves, key=lambda n: (n.reward, n.N, -n.id), default=None)
        if best is None:
            out.append(SearchAnswer(None, None, None, tree.tokens))
        else:
            completion = tree.text(best.id)[len(tree.prompt) :]
            out.append(SearchAnswer(best.text, completion, best.reward, tree.tokens))
    return out
