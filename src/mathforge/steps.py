"""The one code-augmented step format used by data synthesis, SFT, RL rollouts, search and eval.

A solution is a sequence of steps followed by an answer::

    <step>
    # reasoning, written as Python comments
    apples = 3 * 14
    print(apples)
    </step>
    <output>
    42
    </output>
    <step>
    ...
    </step>
    <output>
    ...
    </output>
    <answer>
    The answer is \\boxed{42}
    </answer>

* The model writes ``<step>`` blocks (comments + code) and the final ``<answer>`` block.
* ``<output>`` blocks are written only by the system, from the executor. A generator is stopped at
  ``</step>`` (and at ``<output>``, so a model can never write one itself); the code is executed and
  the real output is appended. When text produced by a model is parsed, any ``<output>`` block in it
  is discarded: :func:`parse_completion` returns code and answer only, never a model-written output.
* State (variables, imports) carries across the steps of one solution, as in a notebook.
* The answer block holds ``\\boxed{...}``; every box in it is the answer (several boxes state a set or
  list; different values boxed for a single-valued gold are a hedge: wrong; see :mod:`mathforge.grader`).

Every tag sits on its own line. In a real model's vocabulary a tag is several tokens and may merge with
the newline after it (Qwen2: ``>\\n`` is one token), so text is never re-tokenized in pieces: the step loop
(:mod:`mathforge.rollout`) keeps the ids the model sampled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

STEP_OPEN, STEP_CLOSE = "<step>", "</step>"
OUTPUT_OPEN, OUTPUT_CLOSE = "<output>", "</output>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
SPECIAL_TOKENS = [STEP_OPEN, STEP_CLOSE, OUTPUT_OPEN, OUTPUT_CLOSE, ANSWER_OPEN, ANSWER_CLOSE]

# A generator stops when a step or the answer is complete, and also the moment a model starts to
# write an output block of its own (that text is never trusted).
STOP_STRINGS = [STEP_CLOSE, ANSWER_CLOSE, OUTPUT_OPEN]
# A step's printed output shown to the model (search, RL, evaluation) is cut here, so that a solution's text
# stays within the policy's and the PPM's context; the executor appends a marker saying how much was dropped.
MAX_OUTPUT_CHARS = 2000

SYSTEM_PROMPT = (
    "Solve the problem step by step. Each step is Python code inside <step> </step>, with the "
    "reasoning written as comments; its printed output follows in <output> </output>. Finish with "
    "<answer> </answer> containing the final answer as \\boxed{}."
)

_BLOCK_RE = re.compile(r"<(step|output|answer)>\n?(.*?)\n?</\1>", re.DOTALL)


@dataclass
class Step:
    """One step: the code the model wrote (comments included) and what the executor printed.

    ``output`` is ``None`` until the step has been executed; ``error`` is the executor's
    ``"Type: message"`` when the code raised, timed out or was killed.
    """

    code: str
    output: str | None = None
    error: str | None = None


@dataclass
class Solution:
    """Steps plus the final answer text (the content of ``<answer>``, ``None`` if not reached)."""

    steps: list[Step] = field(default_factory=list)
    answer: str | None = None

    @property
    def finished(self) -> bool:
        return self.answer is not None

    def render(self) -> str:
        return render_solution(self.steps, self.answer)


def render_step(code: str) -> str:
    """The text a model writes for one step (ends with the closing tag and a newline)."""
    return f"{STEP_OPEN}\n{code.strip(chr(10))}\n{STEP_CLOSE}\n"


def render_output(output: str) -> str:
    """The block the system appends after executing a step."""
    body = output.rstrip("\n")
    return f"{OUTPUT_OPEN}\n{body}\n{OUTPUT_CLOSE}\n" if body else f"{OUTPUT_OPEN}\n{OUTPUT_CLOSE}\n"


def render_answer(answer: str) -> str:
    return f"{ANSWER_OPEN}\n{answer.strip()}\n{ANSWER_CLOSE}\n"


def boxed_answer(value: str) -> str:
    """The canonical answer sentence: ``The answer is \\boxed{value}``."""
    return f"The answer is \\boxed{{{value}}}"


def output_block(step: Step) -> str:
    """The executor's block after ``step`` (its output, then its error if it raised); "" before it ran."""
    if step.output is None and step.error is None:
        return ""
    shown = step.output or ""
    if step.error:
        shown = (shown + "\n" if shown else "") + step.error
    return render_output(shown)


def render_solution(steps: list[Step], answer: str | None = None) -> str:
    """Render executed steps (with their trusted outputs) and an optional answer."""
    parts = []
    for step in steps:
        parts += [render_step(step.code), output_block(step)]
    if answer is not None:
        parts.append(render_answer(answer))
    return "".join(parts)


def parse_completion(text: str) -> Solution:
    """Parse model-written text into steps (code only) and the answer.

    Any ``<output>`` block in ``text`` is ignored, so outputs can only come from the executor.
    A trailing unterminated ``<step>`` is ignored as well (the generator was cut off).
    """
    solution = Solution()
    for match in _BLOCK_RE.finditer(text):
        kind, body = match.group(1), match.group(2)
        if kind == "step":
            if solution.answer is None:
                solution.steps.append(Step(code=body))
        elif kind == "answer" and solution.answer is None:
            solution.answer = body.strip()
    return solution


def parse_generation(text: str) -> tuple[str, str]:
    """Classify one generator chunk produced under :data:`STOP_STRINGS`.

    Returns ``(kind, body)`` where kind is ``"step"`` (body = code), ``"answer"`` (body = answer
    text) or ``"invalid"`` (no complete block; body = the raw text). Backends return the text with
    the stop string kept, so a chunk cut off by the token limit is told apart from a finished one.
    """
    stripped = text.strip()
    for open_tag, close_tag, kind in ((STEP_OPEN, STEP_CLOSE, "step"), (ANSWER_OPEN, ANSWER_CLOSE, "answer")):
        if stripped.startswith(open_tag):
            body = stripped[len(open_tag) :]
            if not body.endswith(close_tag):
                return "invalid", text  # cut off by the length limit, or a faked output block
            body = body[: -len(close_tag)].strip("\n")
            if body.strip() and OUTPUT_OPEN not in body and close_tag not in body:
                return kind, body
    return "invalid", text


def normalize_chunk(kind: str, body: str) -> str:
    """The canonical text of a step or answer chunk, used to merge identical siblings."""
    return render_step(body) if kind == "step" else render_answer(body)


def chat_prompt(tokenizer, problem: str, system_prompt: str | None = None) -> str:
    """The prompt string a generator continues: the chat template over (system, user) with the
    assistant turn opened. Training (TRL prompt/completion) renders the same template."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": problem})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# Tokens that chat templates close an assistant turn with (Qwen, Llama 3, Phi-3, DeepSeek-R1).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<｜end▁of▁sentence｜>")


def end_of_turn_token(tokenizer) -> str | None:
    """The token the tokenizer's chat template closes an assistant turn with (None if none is known): what
    training uses as EOS and generation stops at."""
    template = getattr(tokenizer, "chat_template", None) or ""
    vocab = tokenizer.get_vocab()
    return next((t for t in END_OF_TURN_TOKENS if t in template and t in vocab), None)
