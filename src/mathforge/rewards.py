r"""Reward registry for stage-2 RL: name -> reward function in TRL's `reward_funcs` signature.

A recipe lists names and weights (`reward_funcs: [format, cosine, kimi_length]`, TRL's `reward_weights`);
:func:`build_rewards` turns them into callables ``f(prompts, completions, completion_ids, **columns)``
whose ``__name__`` is the registry name, so TRL logs each under ``rewards/<name>/mean``. A reward of
``None`` means "not applicable": TRL leaves it out of that completion's sum (never a silent 0).

What is measured. ``completions`` are the texts TRL decodes (step format: the model's steps, the
executor's ``<output>`` blocks and the answer). The *answer* graded is the ``<answer>`` block in the step
format (no block: no answer, even if some output printed a box), the whole text otherwise. A *length*
``L`` counts what the model wrote: in ``tokens``, the ``model_tokens`` column the step rollout passes
(``<output>`` tokens excluded), else ``len(completion_ids)``; in ``chars``, the text without ``<output>``
blocks.

Formulas (c = correctness from :mod:`mathforge.grader` with its strict extraction: True, False or None = gold
unparseable / timed out; a hedge, i.e. different values boxed for a single-valued gold, is False):

* ``accuracy``: 1.0 if c, 0.0 if not c, None if c is None.
* ``format``: 1.0 if the completion is well formed, else 0.0. Step format: only ``<step>``/``<output>``
  pairs then one ``<answer>`` holding a closed ``\boxed{}``, nothing else (whitespace aside). Plain text:
  a closed ``\boxed{}``, after the last ``</think>`` if there is one (an open ``<think>``: 0).
* ``cosine`` (length-scaled correctness, Fast-Math-R1 / open-r1): p = min(1, L / cosine_max_len),
  k = cos(pi p); correct: ``min_c + (max_c - min_c)(1 + k)/2``, wrong: ``max_w + (min_w - max_w)(1 + k)/2``
  (defaults -1, -0.1, 0.1, 1: a short correct answer earns ~1, a correct one at L_max 0.1, a short wrong
  one -1, a long wrong one -0.1); None if c is None.
* ``kimi_length`` (Kimi k1.5 group length reward): in the completions of one prompt with lengths
  L_min..L_max, lam = 0.5 - (L - L_min)/(L_max - L_min); correct -> lam, wrong -> min(0, lam); all 0 when
  L_max = L_min; None if c is None. A group is the completions of one prompt seen in one call (one
  process): keep per-process batches a multiple of num_generations (rl.py checks).
* ``soft_overlong`` (DAPO): with L_max = overlong_max_len and cache = overlong_buffer, 0 if
  L <= L_max - cache, (L_max - cache - L)/cache up to L_max, -1 beyond.
* ``ppm``: the process preference model scores ``prompt + prefix`` for each step prefix (each step with
  its output, the last prefix being the whole solution), all completions in one batched call; the
  reward is the min, mean or last of those scores (``ppm_aggregation``), in [-1, 1].
* ``ai_feedback``: an AI judge (any OpenAI-compatible chat endpoint) rates correctness, logic and
  concision. ``score``: each solution gets ``Score: N`` (0..10) -> N/10. ``compare``: the judge ranks a
  group's solutions (``Ranking: 2 > 1 > 3``) -> best 1.0 ... worst 0.0, linearly. A judge that is down,
  times out or answers something unparseable gives None for those completions (skipped), a warning
  and the metric ``ai_feedback/failed``; ``judge_on_error: raise`` stops the run instead. rl.py checks
  that the endpoint answers before training starts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mathforge import steps
from mathforge.errors import UserError

logger = logging.getLogger(__name__)

LENGTH_UNITS = ("tokens", "chars")
PPM_AGGREGATIONS = ("min", "mean", "last")
JUDGE_MODES = ("score", "compare")

_OUTPUT_BLOCK_RE = re.compile(r"<output>.*?</output>\n?", re.DOTALL)
_BLOCK_RE = re.compile(r"\s*<(step|output|answer)>\n(.*?)\n?</\1>\n?", re.DOTALL)
_TAGS = tuple(steps.SPECIAL_TOKENS)


@dataclass
class RewardArguments:
    """Parameters of the registry's rewards (which rewards run, and their weights, are set in rl.py)."""

    length_unit: str = field(
        default="tokens",
        metadata={
            "help": "Length for cosine/kimi_length/soft_overlong: tokens or chars (model-written only)."
        },
    )
    cosine_max_len: int = field(default=1000, metadata={"help": "cosine: L_max, where p reaches 1."})
    cosine_min_value_wrong: float = field(
        default=-1.0, metadata={"help": "cosine: wrong answer of length 0."}
    )
    cosine_max_value_wrong: float = field(default=-0.1, metadata={"help": "cosine: wrong answer at L_max."})
    cosine_min_value_correct: float = field(
        default=0.1, metadata={"help": "cosine: correct answer at L_max."}
    )
    cosine_max_value_correct: float = field(
        default=1.0, metadata={"help": "cosine: correct answer of length 0."}
    )
    overlong_max_len: int = field(
        default=1024, metadata={"help": "soft_overlong: L_max (punishment -1 beyond)."}
    )
    overlong_buffer: int = field(
        default=256,
        metadata={"help": "soft_overlong: the last `buffer` units before L_max punished linearly."},
    )
    grade_timeout_s: float = field(
        default=10.0, metadata={"help": "Seconds one answer comparison may take (then None: skipped)."}
    )
    ppm_path: str | None = field(
        default=None, metadata={"help": "ppm: folder of a PPM from `mathforge ppm`."}
    )
    ppm_aggregation: str = field(
        default="min", metadata={"help": "ppm: min, mean or last of the step scores."}
    )
    ppm_batch_size: int = field(default=32, metadata={"help": "ppm: texts scored per forward pass."})
    judge_base_url: str | None = field(
        default=None,
        metadata={"help": "ai_feedback: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1."},
    )
    judge_model: str | None = field(
        default=None, metadata={"help": "ai_feedback: model name; None: the first one the endpoint lists."}
    )
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "ai_feedback: environment variable holding the API key, if any."},
    )
    judge_mode: str = field(
        default="score", metadata={"help": "ai_feedback: score (each solution) or compare (rank the group)."}
    )
    judge_timeout_s: float = field(default=60.0, metadata={"help": "ai_feedback: seconds per request."})
    judge_max_tokens: int = field(default=256, metadata={"help": "ai_feedback: tokens the judge may write."})
    judge_concurrency: int = field(default=8, metadata={"help": "ai_feedback: requests in flight at once."})
    judge_max_solution_chars: int = field(
        default=6000,
        metadata={"help": "ai_feedback: a longer solution is cut (head and tail) for the judge."},
    )
    judge_extra_body: str | None = field(
        default=None,
        metadata={
            "help": "ai_feedback: JSON merged into each request, e.g. vLLM's "
            '\'{"structured_outputs": {"regex": "Score: (10|[0-9])"}}\'.'
        },
    )
    judge_on_error: str = field(
        default="skip", metadata={"help": "ai_feedback: skip (reward None, warning) or raise (stop the run)."}
    )

    def __post_init__(self):
        checks = [
            ("length_unit", self.length_unit, LENGTH_UNITS),
            ("ppm_aggregation", self.ppm_aggregation, PPM_AGGREGATIONS),
            ("judge_mode", self.judge_mode, JUDGE_MODES),
            ("judge_on_error", self.judge_on_error, ("skip", "raise")),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.cosine_max_len <= 0 or self.overlong_max_len <= 0:
            raise ValueError("cosine_max_len and overlong_max_len must be positive")
        if not 0 < self.overlong_buffer <= self.overlong_max_len:
            raise ValueError("overlong_buffer must be in (0, overlong_max_len]")
        if isinstance(self.judge_extra_body, str):
            try:
                json.loads(self.judge_extra_body)
            except json.JSONDecodeError as err:
                raise ValueError(f"judge_extra_body is not valid JSON: {err}") from None


# --- what a completion says ------------------------------------------------------------------------------


def completion_text(completion) -> str:
    """The text of a completion: a string, or TRL's conversational ``[{"role": ..., "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))


def is_step_format(text: str) -> bool:
    return any(tag in text for tag in _TAGS)


def model_text(text: str) -> str:
    """The text the model wrote: the completion without the executor's ``<output>`` blocks."""
    return _OUTPUT_BLOCK_RE.sub("", text)


def graded_text(text: str) -> str:
    """What is graded: the ``<answer>`` block in the step format (none: ""), else the whole text."""
    if is_step_format(text):
        answer = steps.parse_completion(text).answer
        return answer or ""
    return text


def lengths(completions, completion_ids, unit: str, model_tokens=None) -> list[int]:
    """L of each completion (see the module docstring)."""
    if unit == "chars":
        return [len(model_text(completion_text(c))) for c in completions]
    if model_tokens is not None:
        return [int(n) for n in model_tokens]
    if completion_ids is None:
        raise ValueError("length_unit tokens needs completion_ids (TRL passes them)")
    return [len(ids) for ids in completion_ids]


def groups_of(prompts) -> list[list[int]]:
    """Row indices grouped by prompt, in order of first appearance."""
    by_key: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        key = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, default=str)
        by_key.setdefault(key, []).append(i)
    return list(by_key.values())


# --- formulas ----------------------------------------------------------------------------------------------


def cosine_scaled(correct: bool, length: int, max_len: int, min_wrong, max_wrong, min_correct, max_correct):
    """Cosine length-scaled correctness (see the module docstring)."""
    k = math.cos(math.pi * min(1.0, length / max_len))
    low, high = (min_correct, max_correct) if correct else (max_wrong, min_wrong)
    return low + 0.5 * (high - low) * (1.0 + k)


def kimi_group(correct: list[bool | None], group_lengths: list[int]) -> list[float | None]:
    """Kimi k1.5 length reward of one group (see the module docstring)."""
    lo, hi = min(group_lengths), max(group_lengths)
    out: list[float | None] = []
    for ok, length in zip(correct, group_lengths):
        lam = 0.0 if hi == lo else 0.5 - (length - lo) / (hi - lo)
        out.append(None if ok is None else (lam if ok else min(0.0, lam)))
    return out


def soft_overlong(length: int, max_len: int, buffer: int) -> float:
    """DAPO soft overlong punishment (see the module docstring)."""
    if length <= max_len - buffer:
        return 0.0
    if length <= max_len:
        return (max_len - buffer - length) / buffer
    return -1.0


def is_well_formed(text: str) -> bool:
    """The ``format`` reward's test (see the module docstring)."""
    from mathforge.grader import extract_answer

    if not is_step_format(text):
        if "<think>" in text and "</think>" not in text:
            return False  # still thinking (R1 chat templates open the think block in the prompt)
        tail = text.rsplit("</think>", 1)[-1]
        return "\\boxed" in tail and extract_answer(tail) is not None  # the last box closes
    pos, expect, answer = 0, ("step", "answer"), None
    for match in _BLOCK_RE.finditer(text):
        if match.start() != pos or match.group(1) not in expect or answer is not None:
            return False
        kind, pos = match.group(1), match.end()
        expect = ("output",) if kind == "step" else ("step", "answer")
        if kind == "answer":
            answer = match.group(2)
    if text[pos:].strip() or answer is None or "\\boxed" not in answer:
        return False
    return extract_answer(answer) is not None


# --- reward functions ---------------------------------------------------------------------------------------


def _named(name: str, func: Callable) -> Callable:
    func.__name__ = func.__qualname__ = name
    return func


class _Correctness:
    """Grades each completion against the `answer` column, sharing one grader (and its cache) between rewards."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._grader = None

    def __call__(self, completions, answer, rollout_end=None) -> list[bool | None]:
        from mathforge.grader import Grader

        if answer is None:
            raise ValueError("correctness rewards need the gold `answer` column in the training set")
        if self._grader is None:
            self._grader = Grader(timeout=self.timeout, workers=1)
        # An answer block goes to the grader with its tags: every box in it is the answer (no correction rule).
        texts = [_tagged(graded_text(text), text) for text in map(completion_text, completions)]
        if rollout_end is not None:  # step-format rollouts: only a trajectory that ended on an answer has one
            # (a broken last chunk is kept in the completion and may hold a complete-looking <answer> block)
            texts = [t if end == "answer" else "" for t, end in zip(texts, rollout_end)]
        return self._grader.grade_many(texts, [str(a) for a in answer])


def _tagged(graded: str, text: str) -> str:
    return steps.render_answer(graded) if graded and is_step_format(text) else graded


def make_accuracy(args: RewardArguments, grade: _Correctness, **_) -> Callable:
    def accuracy(completions, answer=None, **kwargs):
        return [
            None if c is None else float(c) for c in grade(completions, answer, kwargs.get("rollout_end"))
        ]

    return _named("accuracy", accuracy)


def make_format(args: RewardArguments, **_) -> Callable:
    def format_reward(completions, **kwargs):
        return [float(is_well_formed(completion_text(c))) for c in completions]

    return _named("format", format_reward)


def make_cosine(args: RewardArguments, grade: _Correctness, **_) -> Callable:
    params = (
        args.cosine_max_len,
        args.cosine_min_value_wrong,
        args.cosine_max_value_wrong,
        args.cosine_min_value_correct,
        args.cosine_max_value_correct,
    )

    def cosine(completions, completion_ids=None, answer=None, model_tokens=None, **kwargs):
        lens = lengths(completions, completion_ids, args.length_unit, model_tokens)
        correct = grade(completions, answer, kwargs.get("rollout_end"))
        return [None if c is None else cosine_scaled(c, n, *params) for c, n in zip(correct, lens)]

    return _named("cosine", cosine)


def make_kimi_length(args: RewardArguments, grade: _Correctness, **_) -> Callable:
    def kimi_length(prompts, completions, completion_ids=None, answer=None, model_tokens=None, **kwargs):
        lens = lengths(completions, completion_ids, args.length_unit, model_tokens)
        correct = grade(completions, answer, kwargs.get("rollout_end"))
        out: list[float | None] = [None] * len(completions)
        for rows in groups_of(prompts):
            for i, r in zip(rows, kimi_group([correct[i] for i in rows], [lens[i] for i in rows])):
                out[i] = r
        return out

    return _named("kimi_length", kimi_length)


def make_soft_overlong(args: RewardArguments, **_) -> Callable:
    def overlong(completions, completion_ids=None, model_tokens=None, **kwargs):
        lens = lengths(completions, completion_ids, args.length_unit, model_tokens)
        return [soft_overlong(n, args.overlong_max_len, args.overlong_buffer) for n in lens]

    return _named("soft_overlong", overlong)


def step_prefixes(text: str) -> list[str]:
    """The prefixes the PPM scores: through each step's output, then the whole solution."""
    solution = steps.parse_completion(text)
    if not solution.steps and solution.answer is None:
        return [text]
    cuts, pos = [], 0
    for match in _BLOCK_RE.finditer(text):
        pos = match.end()
        if match.group(1) in ("output", "answer"):
            cuts.append(pos)
    prefixes = [text[:c] for c in cuts] or [text]
    if prefixes[-1] != text and text[len(prefixes[-1]) :].strip():
        prefixes.append(text)
    return prefixes


class PPMReward:
    """``ppm``: aggregated PPM scores of a completion's step prefixes; one batched scorer call per batch.

    ``scorer(texts) -> scores in [-1, 1]`` (:class:`mathforge.ppm.PPMScorer`); ``prompt_text`` renders a
    prompt as the text the policy continued (the chat template), the PPM's training convention.
    """

    def __init__(self, scorer, prompt_text: Callable, aggregation: str = "min"):
        self.__name__ = "ppm"
        self.scorer, self.prompt_text, self.aggregation = scorer, prompt_text, aggregation

    def __call__(self, prompts, completions, **kwargs):
        texts, owner = [], []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            head = self.prompt_text(prompt)
            for prefix in step_prefixes(completion_text(completion)):
                texts.append(head + prefix)
                owner.append(i)
        scores: list[list[float]] = [[] for _ in completions]
        for i, s in zip(owner, self.scorer(texts)):
            scores[i].append(float(s))
        if self.aggregation == "min":
            return [min(s) for s in scores]
        if self.aggregation == "mean":
            return [sum(s) / len(s) for s in scores]
        return [s[-1] for s in scores]


def make_ppm(args: RewardArguments, prompt_text: Callable | None = None, device=None, **_) -> PPMReward:
    from mathforge.ppm import load_scorer

    if not args.ppm_path:
        raise UserError("the ppm reward needs ppm_path (a folder written by `mathforge ppm`)")
    scorer = load_scorer(args.ppm_path, batch_size=args.ppm_batch_size, device=device)
    if prompt_text is None:

        def prompt_text(prompt):
            if isinstance(prompt, str):
                return prompt
            return scorer.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    return PPMReward(scorer, prompt_text, args.ppm_aggregation)


# --- AI feedback ----------------------------------------------------------------------------------------------

SCORE_PROMPT = (
    "You are grading a solution to a math problem. Judge its correctness, the soundness of its logic and "
    "its concision (no needless steps).\n\nProblem:\n{problem}\n{reference}\nSolution:\n{solution}\n\n"
    "Reply with one line `Score: N`, N an integer from 0 (wrong or incoherent) to 10 (correct, sound and "
    "concise)."
)
COMPARE_PROMPT = (
    "You are comparing {k} solutions to a math problem. Judge correctness first, then the soundness of the "
    "logic, then concision.\n\nProblem:\n{problem}\n{reference}\n{solutions}\n\nReply with one line "
    "`Ranking: ` followed by the {k} solution numbers from best to worst separated by `>`, e.g. "
    "`Ranking: {example}`."
)
_SCORE_RE = re.compile(r"score\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_RANKING_RE = re.compile(r"ranking\s*[:=]\s*([\d\s>,]+)", re.IGNORECASE)


class JudgeError(RuntimeError):
    """The judge could not be reached or did not answer in the expected form."""


def parse_score(reply: str) -> float:
    """``Score: N`` (the last one) -> N / 10; JudgeError if absent or outside 0..10."""
    found = _SCORE_RE.findall(reply or "")
    if not found:
        raise JudgeError(f"no `Score: N` in the judge's reply {reply[:80]!r}")
    value = float(found[-1])
    if not 0 <= value <= 10:
        raise JudgeError(f"judge score {value} outside 0..10")
    return value / 10


def parse_ranking(reply: str, k: int) -> list[float]:
    """``Ranking: 2 > 1 > 3`` -> reward per solution (best 1.0 ... worst 0.0); JudgeError unless a permutation."""
    found = _RANKING_RE.findall(reply or "")
    if not found:
        raise JudgeError(f"no `Ranking:` in the judge's reply {reply[:80]!r}")
    order = [int(x) for x in re.findall(r"\d+", found[-1])]
    if sorted(order) != list(range(1, k + 1)):
        raise JudgeError(f"judge ranking {order} is not an ordering of solutions 1..{k}")
    out = [0.0] * k
    for position, label in enumerate(order):
        out[label - 1] = 1.0 - position / (k - 1) if k > 1 else 1.0
    return out


class OpenAIJudge:
    """Minimal client of an OpenAI-compatible `/chat/completions` endpoint (stdlib only, no SDK needed)."""

    def __init__(self, args: RewardArguments):
        if not args.judge_base_url:
            raise UserError("the ai_feedback reward needs judge_base_url (an OpenAI-compatible endpoint)")
        self.base = args.judge_base_url.rstrip("/")
        self.model = args.judge_model
        self.key = os.environ.get(args.judge_api_key_env) if args.judge_api_key_env else None
        self.timeout, self.max_tokens = args.judge_timeout_s, args.judge_max_tokens
        self.extra = json.loads(args.judge_extra_body) if args.judge_extra_body else {}

    def _request(self, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode())
        except urllib.error.HTTPError as err:
            raise JudgeError(f"judge at {self.base} answered HTTP {err.code}: {err.read()[:200]!r}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise JudgeError(f"judge at {self.base} unreachable: {reason}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise JudgeError(f"judge at {self.base} answered non-JSON: {err}") from None

    def check(self) -> str:
        """Ask the endpoint for its models (fails fast before training); returns the model used."""
        listed = self._request("/models")
        names = [m.get("id") for m in listed.get("data", []) if isinstance(m, dict)]
        if self.model is None:
            if not names:
                raise JudgeError(f"judge at {self.base} lists no model; set judge_model")
            self.model = names[0]
        return self.model

    def chat(self, prompt: str) -> str:
        if self.model is None:
            self.check()
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            **self.extra,
        }
        reply = self._request("/chat/completions", body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge reply has no choices[0].message.content: {str(reply)[:200]}") from None
        if not isinstance(content, str):
            raise JudgeError("judge reply content is not text")
        return content


class AIFeedbackReward:
    """``ai_feedback``: the judge's score (or the group ranking) of each solution (see the module docstring)."""

    def __init__(self, args: RewardArguments, judge: OpenAIJudge | None = None):
        self.__name__ = "ai_feedback"
        self.args, self.judge = args, judge or OpenAIJudge(args)

    def _clip(self, text: str) -> str:
        n = self.args.judge_max_solution_chars
        return text if len(text) <= n else text[: n // 2] + "\n[...]\n" + text[-n // 2 :]

    def _ask(self, job: tuple[str, Callable]):
        prompt, parse = job
        try:
            return parse(self.judge.chat(prompt)), None
        except JudgeError as err:
            return None, str(err)

    def __call__(self, prompts, completions, answer=None, problem=None, log_metric=None, **kwargs):
        texts = [self._clip(completion_text(c)) for c in completions]
        problems = problem or [_last_user_message(p) for p in prompts]
        golds = answer or [None] * len(texts)

        def reference(i):
            return f"Reference answer: {golds[i]}\n" if golds[i] not in (None, "") else ""

        jobs, rows = [], []
        if self.args.judge_mode == "score":
            for i, text in enumerate(texts):
                prompt = SCORE_PROMPT.format(problem=problems[i], reference=reference(i), solution=text)
                jobs.append((prompt, parse_score))
                rows.append([i])
        else:
            for group in groups_of(prompts):
                shown = "\n\n".join(f"Solution {j + 1}:\n{texts[i]}" for j, i in enumerate(group))
                k = len(group)
                example = " > ".join(str(j) for j in [*range(2, k + 1), 1][:k])
                prompt = COMPARE_PROMPT.format(
                    k=k,
                    problem=problems[group[0]],
                    reference=reference(group[0]),
                    solutions=shown,
                    example=example,
                )
                jobs.append((prompt, lambda reply, k=k: parse_ranking(reply, k)))
                rows.append(group)
        with ThreadPoolExecutor(max(1, min(self.args.judge_concurrency, len(jobs)))) as pool:
            answers = list(pool.map(self._ask, jobs))
        out: list[float | None] = [None] * len(texts)
        errors = []
        for group, (value, error) in zip(rows, answers):
            if error is not None:
                errors.append(error)
                continue
            for i, v in zip(group, value if isinstance(value, list) else [value]):
                out[i] = v
        if log_metric is not None:
            log_metric("ai_feedback/failed", len(errors) / max(1, len(jobs)))
        if errors:
            message = (
                f"ai_feedback: {len(errors)} of {len(jobs)} judge calls failed, rewards skipped: {errors[0]}"
            )
            if self.args.judge_on_error == "raise":
                raise JudgeError(message)
            logger.warning(message)
        return out


def _last_user_message(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def make_ai_feedback(args: RewardArguments, **_) -> AIFeedbackReward:
    return AIFeedbackReward(args)


REWARDS: dict[str, Callable] = {
    "accuracy": make_accuracy,
    "format": make_format,
    "cosine": make_cosine,
    "kimi_length": make_kimi_length,
    "soft_overlong": make_soft_overlong,
    "ppm": make_ppm,
    "ai_feedback": make_ai_feedback,
}


def build_rewards(names: list[str], args: RewardArguments, **context) -> list[Callable]:
    """The reward callables for `names` (context: ``prompt_text``, ``device`` for ppm)."""
    if not names:
        raise UserError(f"no rewards: set reward_funcs to some of {', '.join(REWARDS)}")
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise UserError(f"unknown reward '{unknown[0]}' in reward_funcs (choose from: {', '.join(REWARDS)})")
    if len(set(names)) != len(names):
        raise UserError(f"reward_funcs lists a reward twice: {names}")
    grade = _Correctness(args.grade_timeout_s)
    return [REWARDS[name](args, grade=grade, **context) for name in names]


__all__ = [
    "REWARDS",
    "AIFeedbackReward",
    "JudgeError",
    "OpenAIJudge",
    "PPMReward",
    "RewardArguments",
    "build_rewards",
    "cosine_scaled",
    "kimi_group",
    "soft_overlong",
]
