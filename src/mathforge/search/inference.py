"""Inference-time search: more compute per problem than one greedy solution, one answer out.

Every function works on chat prompts (``steps.chat_prompt``), with a ``scorer(texts) -> values`` (e.g. the
PPM's ``load_scorer``) where it needs one, batches the work of all problems into shared generator/executor
calls through the one step loop of :mod:`mathforge.rollout`, and returns one :class:`SearchAnswer` per
prompt. Majority vote and best-of-N choose among solutions sampled by :func:`mathforge.rollout.rollout`:

* :func:`mcts`: the search of :mod:`.mcts` without a gold answer: a finished solution's value is the
  scorer's score of the whole text, new steps start from their PPM score; the answer of the
  best-scored solution wins (rStar-Math).
* :func:`step_beam_search`: B1 beams, B2 samples from each, all children scored, the top B1 kept; a
  finished solution leaves the beam and takes its slot with it, so B1 solutions come out (AlphaMath).
* :func:`best_of_n`: N sampled solutions, the best-scored finished one.
* :func:`weighted_vote`: N sampled solutions, the final answer with the largest summed score (a PPM-weighted
  majority vote: agreement between samples and the PPM's judgement both count).
* :func:`majority_vote`: N sampled solutions, the most frequent final answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from mathforge import steps
from mathforge.eval.metrics import plurality
from mathforge.generation import SamplingConfig
from mathforge.rollout import Trajectory, expand, start
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


def vote(answers: list[str | None], grader=None) -> tuple[int, int] | None:
    """The majority rule (:func:`mathforge.eval.metrics.plurality`) over final answers: (index of the first
    answer of the winning group, its votes), or None when no answer has a final answer. Answers group by
    their final answer (the ``\\boxed{}`` content, spaces ignored) and, with a ``grader``, also by
    equivalence (``\\frac{1}{2}`` = ``0.5``)."""
    return plurality(answer_keys(answers, grader))


def answer_keys(answers: list[str | None], grader=None) -> list[str | None]:
    """One key per answer for :func:`vote`: equal keys are the same final answer; None: no final answer."""
    from mathforge.grader import extract_answer

    keys: list[str | None] = []
    for text in answers:
        key = extract_answer(text) if text is not None else None
        if key is not None:
            key = "".join(key.split())
            if grader is not None and key not in keys:  # the first earlier group it equals, if any
                groups = (k for k in dict.fromkeys(keys) if k is not None)
                key = next((k for k in groups if grader.grade(key, k) is True), key)
        keys.append(key)
    return keys


def majority_vote(groups: list[list[Trajectory]], grader=None) -> list[SearchAnswer]:
    """Per problem, of its sampled solutions (:func:`mathforge.rollout.rollout`), the one with the most
    frequent final answer (:func:`vote`); its score is the vote share."""
    out = []
    for group in groups:
        tokens = sum(t.num_tokens for t in group)
        winner = vote([t.answer for t in group], grader=grader)
        if winner is None:
            out.append(SearchAnswer(None, None, None, tokens))
            continue
        best, votes = winner
        out.append(SearchAnswer(group[best].answer, group[best].completion, votes / len(group), tokens))
    return out


def _scored_finished(prompts: list[str], groups: list[list[Trajectory]], scorer: Scorer) -> dict:
    """Per prompt index, its finished solutions with their scores (one scorer call for all problems)."""
    finished = [(i, t) for i, group in enumerate(groups) for t in group if t.answer is not None]
    scores = scorer([prompts[i] + t.completion for i, t in finished]) if finished else []
    scored: dict[int, list[tuple[float, Trajectory]]] = {}
    for (i, traj), score in zip(finished, scores):
        scored.setdefault(i, []).append((float(score), traj))
    return scored


def best_of_n(prompts: list[str], groups: list[list[Trajectory]], scorer: Scorer) -> list[SearchAnswer]:
    """Per prompt, of its sampled solutions (:func:`mathforge.rollout.rollout`), the finished one the
    scorer rates highest."""
    scored = _scored_finished(prompts, groups, scorer)
    out = []
    for i, group in enumerate(groups):
        tokens = sum(t.num_tokens for t in group)
        if i in scored:
            score, traj = max(scored[i], key=lambda x: x[0])  # ties: the first sampled
            out.append(SearchAnswer(traj.answer, traj.completion, score, tokens))
        else:
            out.append(SearchAnswer(None, None, None, tokens))
    return out


def weighted_vote(
    prompts: list[str], groups: list[list[Trajectory]], scorer: Scorer, grader=None
) -> list[SearchAnswer]:
    """Per prompt, of its sampled solutions, the final answer whose solutions' scores sum highest; a score
    s in [-1, 1] weighs (s + 1) / 2, so a solution the scorer calls wrong adds little. The answer's
    best-scored solution represents it; its score is the answer's share of the summed weight."""
    scored = _scored_finished(prompts, groups, scorer)
    out = []
    for i, group in enumerate(groups):
        tokens = sum(t.num_tokens for t in group)
        candidates = [((score + 1) / 2, t) for score, t in scored.get(i, [])]
        keys = answer_keys([t.answer for _, t in candidates], grader)
        weight: dict[str, float] = {}
        for (w, _), key in zip(candidates, keys):
            if key is not None:
                weight[key] = weight.get(key, 0.0) + w
        if not weight:
            out.append(SearchAnswer(None, None, None, tokens))
            continue
        winner = max(weight, key=weight.__getitem__)  # ties: the answer seen first
        w, best = max(((w, t) for (w, t), key in zip(candidates, keys) if key == winner), key=lambda x: x[0])
        total = sum(weight.values())
        out.append(
            SearchAnswer(best.answer, best.completion, weight[winner] / total if total else None, tokens)
        )
    return out


def step_beam_search(
    prompts: list[str],
    generator,
    executor,
    scorer: Scorer,
    sampling: SamplingConfig,
    beams: int = 3,
    max_steps: int = 16,
    max_code_errors: int = 2,
) -> list[SearchAnswer]:
    """Step-level beam search: ``beams`` (B1) beams per prompt, ``sampling.n`` (B2) next steps sampled from
    each; every child is scored and the top B1 of a problem go on (see the module docstring)."""
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
