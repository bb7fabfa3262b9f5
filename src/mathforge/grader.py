r"""Answer grading: is a model's final answer equal to the reference ("gold") answer?

Data synthesis, SFT filtering, RL rewards and evaluation all decide "correct" here, and both failure
modes cost: a false "correct" poisons training data, a false "wrong" poisons preference pairs. The
mathematics is HuggingFace ``math-verify`` (sympy); this module is the normalisation around it:

* Extraction finds the final answer(s) in a completion, by a policy (below).
* ``_prepare`` rewrites notations that math-verify misses or gets wrong, and splits off units, numeral
  bases and times of day so that they are compared on their own.
* Plain numbers on both sides are compared exactly, without sympy (most GSM8K-style calls).
* Everything else runs math-verify in worker subprocesses. Each request has a soft deadline (an alarm
  in the worker) and a hard one (the worker is killed and replaced), so a call returns in bounded time
  from any thread, whatever the input.
* Results are cached per (prediction answers, gold answers), LRU; a run out of time is not cached.

Results: ``True`` equal; ``False`` different, or the prediction has no usable answer; ``None``
unknown: the gold has no parseable answer, or the comparison ran out of time. ``None`` is never a
pass; treat it as "not correct" and count it separately where that matters.

Extraction policies (:data:`EXTRACTION_POLICIES`; the gold is always read with ``strict``):

* ``strict`` (default; our step format and our prompts): an ``<answer>`` block if the text has one
  (only the last; an unclosed one is no answer); else the ``\boxed{}``/``\fbox{}`` boxes; else what
  follows the last "answer is" (its leading math span, else its first sentence: "The answer is 18.
  Let me know ..." gives ``18``); else the last GSM8K ``#### N`` line; else the whole text if it is one line.
* ``lenient`` (other systems' outputs): boxes as above; else the last stated answer by position among
  "answer is", a "Final Answer:"/"Answer:" line (markdown emphasis allowed) and ``#### N``; else a last
  line ``A: N``; else a one-line text.
* ``any``: ``lenient``, then math-verify's own extraction (its final-answer patterns, then the last
  expression or number) for free text, read up to a closing check ("Check: ...", "Let me verify ...")
  so that the numbers of a verification do not replace the stated one. A one-line sentence goes to
  math-verify too (a bare one-line answer is still taken whole).

Several boxes are decided by what they mean:

* In free text an explicit correction counts the final answer: a box is dropped when a correction word
  (wait, actually, mistake, wrong, incorrect, error, oops, recheck, double-check, recalculate,
  re-evaluate, ...) stands between it and a later box. Boxes repeating one value count once.
* Inside an ``<answer>`` block there is no correction: every box in it is the answer.
* The boxes left are the answer. Against a gold that states several values (several boxes, a top-level
  comma, a set ``\{...\}``, ``\pm``, "and") they are compared together as one set or list: one box per
  solution or per ordered pair is right, a missing or extra one is wrong. Against a single-valued gold
  every box must equal it: a hedge (``\boxed{5} or \boxed{1}`` for gold ``1``) is wrong, while one value
  boxed twice in two forms (``\frac14`` and ``0.25``) is right. A first box that is not corrected but
  superseded ("so $a=\boxed{4}$, then $b=\boxed{20}$") is therefore a hedge: a false "wrong" by design.
* An unclosed box (a truncated completion) means no answer.

Decisions where notation is ambiguous (we prefer a false "wrong" to a false "correct"):

* Plain numbers compare exactly: ``18`` = ``\$18.00`` = ``18.0``, but ``0.333`` != ``0.3333``.
  math-verify's 6-decimal rounding applies only against a non-literal (``\frac13`` = ``0.333333``).
  E-notation is a plain number: ``3e5`` = ``300000`` = ``3 \times 10^5``.
* Numbers in words: ``five`` = ``5``, ``twenty-one`` = ``21``, ``one hundred and five`` = ``105``,
  ``3 million`` = ``3000000`` (a scale word is part of the number, never a unit).
* Thousands separators ``10,\!080``, ``10{,}080``, ``10,080``, ``10\,080``, ``10 080`` mean 10080
  (groups of three digits, first group without a leading zero); ``10, 080`` is a list. A comma that may
  be a decimal comma (``0,500``, ``3,5``) is read as a list, so it equals neither ``0.5`` nor ``500``.
* Repeating decimals: ``0.\overline{3}`` = ``\frac13``; ``0.33`` is not.
* Percent follows math-verify: ``X\%`` equals both ``X`` and ``X/100`` (``50\%`` = ``50`` = ``0.5``).
* The empty set: ``\emptyset`` = ``\varnothing`` = ``\{\}`` = ``∅`` = "empty set".
* Times of day, when either side says a.m./p.m.: ``2:30 PM`` = ``14:30`` = ``2:30 p.m.``, != ``2:30 AM``.
  A side without a half of the day and an hour of 1-12 (``2:30``) leaves it to the question, so it
  equals both halves of that clock time. Without a.m./p.m. on either side, ``h:mm`` is not read as a time.
* Units: a unit on one side only is ignored (``10\text{ cm}`` = ``10``, either way round); units on
  both sides must agree after a small alias table (``10\text{ m}`` != ``10\text{ cm}``,
  ``\text{cm}^2`` != ``\text{cm}``). Spelled out = abbreviated (``5 meters`` = ``5\text{ m}``,
  ``square feet`` = ``\text{ft}^2``, ``mph`` = ``miles per hour``). No unit conversion:
  ``1\text{ m}`` != ``100\text{ cm}``. Units may sit in ``\text``, ``\mbox``, ``\mathrm``, ``\textrm``,
  ``\textit``, ``\textbf``, ``\operatorname``, ``{\rm ...}``, or after the math span (``$24$ square feet``);
  one-letter units after a space are only m, s, h, g, l (``4 t`` is a variable).
  math-verify's own unit stripping is off: it drops trailing letters such as ``t``, so ``4t`` = ``4``.
* Degrees are a unit: ``30^\circ`` = ``30`` = ``30\text{ degrees}``, but not ``\frac{\pi}{6}``.
* Bases: ``52_8`` = ``52`` (subscript left out) but != ``42`` (its decimal value); a prediction's
  subscript must match the gold's (gold ``52``, prediction ``52_8`` is wrong).
* ``x=3`` = ``3``, but ``x=3`` != ``y=3`` (math-verify). ``x \in [-2,7]`` = ``-2 \le x \le 7`` = ``[-2,7]``.
* A one-row or one-column matrix is the tuple of its entries, also as ``\left(\begin{array}{c}...\right)``
  or ``(\begin{matrix}...)``; tuples are ordered: ``(1,2)`` != ``(2,1)``.
* ``1 \pm \sqrt{2}`` means both values; either one alone is wrong.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from fractions import Fraction
from functools import cache, lru_cache
from multiprocessing.connection import Connection
from typing import NamedTuple

__all__ = [
    "EXTRACTION_POLICIES",
    "CacheInfo",
    "Grader",
    "extract_answer",
    "extract_answers",
    "final_answer",
    "grade",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------

EXTRACTION_POLICIES = ("strict", "lenient", "any")

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_BLOCK_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_IS_RE = re.compile(r"\banswer\s+is\b\s*:?", re.IGNORECASE)
# Regexes that see whole completions are kept linear-time: they run in the caller, outside any timeout.
_GSM8K_RE = re.compile(r"^[ \t]*####[ \t]*(\S.*)", re.MULTILINE)
_ANSWER_LINE_RE = re.compile(
    r"^[ \t>#*_]*(?:final[ \t]+)?answer[ \t*_]*:[ \t*_]*(?=\S)", re.IGNORECASE | re.MULTILINE
)
_A_LINE_RE = re.compile(r"^[ \t]*A[ \t]*:[ \t]*(\S[^\n]*)\s*\Z")
_LEADING_MATH_RE = re.compile(r"\$\$(.+?)\$\$|\$((?:[^$\\]|\\.)+)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_HOPE_RE = re.compile(r"I hope it is correct\.?$", re.IGNORECASE)
# The end of the sentence that states an answer: "18. Let me know ..." -> "18" (a decimal point is not one).
_SENTENCE_END_RE = re.compile(r"(?<=[^\d\s])\.(?=\s|$)|\.(?=\s+[A-Z(])|[!?](?=\s|$)|\n")
# Words that mark a later box as a correction of an earlier one (see the module docstring).
_CORRECTION_RE = re.compile(
    r"\b(?:wait|actually|correct(?:ion|ed|ing)|mistake|oops|wrong|incorrect|error|miscalculat\w*|"
    r"re-?check\w*|double-?check\w*|re-?calculat\w*|re-?evaluat\w*|re-?examin\w*|redo|on second thought)\b",
    re.IGNORECASE,
)


def extract_answers(text: str, extraction: str = "strict") -> tuple[str, ...] | None:
    r"""The final answer(s) marked in ``text``, or ``None`` if it marks none (see the module docstring).

    Several answers are returned when the final answer is stated in several boxes (one per solution,
    or a hedge: :meth:`Grader.grade` decides which by the gold). ``extraction`` is a policy of
    :data:`EXTRACTION_POLICIES`; ``"any"``'s math-verify fallback needs a worker, so here it is ``"lenient"``.
    """
    _check_policy(extraction)
    blocks = list(_ANSWER_BLOCK_RE.finditer(text))
    block = blocks[-1] if blocks else None
    if block is not None:  # the step format: only the last answer block, every box in it counts
        text = block[1]
    elif "<answer>" in text:
        return None  # an answer block that never closed: a truncated completion
    boxes = _boxes(text, corrections=block is None)
    if boxes is not None:
        return boxes or None
    if extraction == "strict":
        answer_is = list(_ANSWER_IS_RE.finditer(text))
        if answer_is:
            return _one(_answer_after(text[answer_is[-1].end() :]))
        hashes = _GSM8K_RE.findall(text)
        return _one(hashes[-1].strip()) if hashes else None
    # lenient: the last stated answer, whichever marker states it
    starts = [m.end() for m in _ANSWER_IS_RE.finditer(text)] + [
        m.end() for m in _ANSWER_LINE_RE.finditer(text)
    ]
    starts += [m.start(1) for m in _GSM8K_RE.finditer(text)]
    if starts:
        return _one(_answer_after(text[max(starts) :]))
    lines = text.rstrip().rsplit("\n", 1)
    last_line = _A_LINE_RE.match(lines[-1]) if len(lines) > 1 else None
    return _one(_answer_after(last_line[1])) if last_line else None


def extract_answer(text: str) -> str | None:
    r"""The final answer marked in ``text`` as one string (several boxes joined by ", "), or ``None``.

    The strict policy: the boxes of the last ``<answer>`` block; else the content of the last
    ``\boxed{...}``/``\fbox{...}`` and of any earlier box it does not correct (an unclosed box gives
    ``None``); else what follows the last "answer is" (e.g. "The final answer is $\frac12$. I hope it
    is correct." gives ``\frac12``); else the last GSM8K ``#### N`` line.
    """
    answers = extract_answers(text)
    return ", ".join(answers) if answers else None


def _check_policy(extraction: str) -> None:
    if extraction not in EXTRACTION_POLICIES:
        raise ValueError(
            f"unknown answer extraction '{extraction}'; choose one of {', '.join(EXTRACTION_POLICIES)}"
        )


def _one(answer: str | None) -> tuple[str, ...] | None:
    return (answer,) if answer else None


def _boxes(text: str, corrections: bool) -> tuple[str, ...] | None:
    """The distinct final boxes: () if a box never closes, None if there is none.

    With ``corrections``, a box followed by a correction word and then another box is dropped.
    """
    answers: list[str] = []
    position = 0
    for match in _BOX_RE.finditer(text):
        if match.start() < position:
            continue  # a box inside a box
        content, end = _braced(text, match.end())
        if end is None:
            return ()  # truncated
        if corrections and answers and _CORRECTION_RE.search(text, position, match.start()):
            answers.clear()
        if content and content not in answers:
            answers.append(content)
        position = end
    if position == 0:
        return None
    return tuple(answers)


def _braced(text: str, start: int) -> tuple[str | None, int | None]:
    """The content of the ``{...}`` group that opens at ``start`` (after spaces) and where it ends."""
    i = start
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return None, None
    depth, j = 0, i
    while j < len(text):
        char = text[j]
        if char == "\\":  # \{ \} \\ are not grouping braces
            j += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip() or None, j + 1
        j += 1
    return None, None


def _answer_after(rest: str) -> str | None:
    """The answer stated at the start of ``rest``: a leading math span, else its first sentence."""
    rest = _HOPE_RE.sub("", rest.replace("**", "").strip()).strip()
    math = _LEADING_MATH_RE.match(rest)
    if math:
        answer = next(group for group in math.groups() if group is not None)
    else:
        end = _SENTENCE_END_RE.search(rest)
        answer = rest[: end.start()] if end else rest
    return answer.strip().rstrip(".").strip() or None


def _lone_line(text: str) -> tuple[str, ...] | None:
    """Text with no marker is the answer if it is one line (and holds no unclosed box)."""
    if _BOX_RE.search(text) or "<answer>" in text:
        return None
    text = text.strip()
    return (text,) if text and "\n" not in text else None


def _answers_in(text: str, extraction: str) -> tuple[str, ...] | None:
    """The marked answers of ``text``, else ``text`` itself if it is one line (no math-verify here).

    Under ``"any"`` a one-line sentence is left to math-verify's extraction instead.
    """
    answers = extract_answers(text, extraction)
    if answers is not None:
        return answers
    if extraction == "any" and len(_WORD_RE.findall(text)) >= 3:
        return None
    return _lone_line(text)


_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}\b")
# A check after the stated value ("Checking: 3 + 5 = 8"): free text is read up to the last one.
_CHECK_RE = re.compile(
    r"(?:^|(?<=[.!?:]\s)|(?<=\n))[ \t*#]*(?:check(?:ing)?\b|verif(?:y|ication)\b|to verify\b|"
    r"let(?:'s| me| us) (?:double-?)?(?:check|verify)\b|double-?check)",
    re.IGNORECASE,
)


def _mv_extract(text: str) -> str | None:
    """math-verify's own extraction (its final-answer patterns, then the last expression or number),
    on the text before a closing check that mentions other numbers."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    checks = list(_CHECK_RE.finditer(text))
    if checks and re.search(r"\d", text[: checks[-1].start()]):
        text = text[: checks[-1].start()]
    found = parse(
        text,
        [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
        fallback_mode="first_match",
        parsing_timeout=None,
    )
    strings = [item for item in found if isinstance(item, str) and item.strip()]
    return strings[-1].strip() if strings else None


# ---------------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------------


class _Answer(NamedTuple):
    value: str  # normalised LaTeX or plain text, units and base subscript removed
    unit: str | None  # canonical unit, e.g. "centimeter^2", "deg"
    base: int | None  # numeral base of a subscript such as 52_8
    time: tuple[int, str] | None = None  # a time of day: minutes after midnight, and "ampm", "24h" or "clock"


_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_PERCENT_RE = re.compile(r"\\text\{\s*percent\s*\}|\bpercent\b|(?<!\\)%")
_DEGREE_RE = re.compile(r"(?:\s|\\[,;: !])*(?:\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°)\s*$")
_TEXT_COMMANDS = (
    r"text|mbox|mathrm|textrm|textnormal|textit|textbf|textsf|textup|mathit|mathsf|mathbf|operatorname"
)
_RM_GROUP_RE = re.compile(r"\{\\(?:rm|it|bf|sf)\s+([^{}]*)\}")
_TEXT_UNIT_RE = re.compile(
    r"(?P<value>.*?\S)\s*(?:(?:\\[,;: !]|~|\\quad)\s*)*\\(?:" + _TEXT_COMMANDS + r")\s*"
    r"\{(?P<unit>\s*[A-Za-z][A-Za-z ./]*)\}(?:\^\s*\{?(?P<power>\d)\}?)?"
)
_WORD_UNIT_RE = re.compile(
    r"(?P<value>[-+]?[\d.,]*\d)\s+(?P<unit>[A-Za-z]+(?:/[A-Za-z]+)?(?:\s+[A-Za-z]+(?:/[A-Za-z]+)?)*)"
    r"(?:\^\s*\{?(?P<power>\d)\}?)?"
)
# A unit written after the math span of an answer: "$10$ cm", "\(3\) square feet".
_OUTSIDE_UNIT_RE = re.compile(
    r"(?:\$(?P<dollar>[^$]+)\$|\\\((?P<paren>[^$]*?)\\\))\s*"
    r"(?P<unit>[A-Za-z][A-Za-z ./]*?)(?:\^\s*\{?(?P<power>\d)\}?)?\s*\.?"
)
# Trailing words that change the value, so must not be split off as a unit ("2\mathrm{i}", "3 million").
_NOT_UNITS = {"i", "e", "pi", "and", "or", "sqrt", "hundred", "thousand", "million", "billion", "trillion"}
_LETTER_UNITS = {
    "m",
    "s",
    "h",
    "g",
    "l",
}  # one-letter units split off after a space ("10 m"); others are variables
# Enough aliases that common spellings of one unit agree; not a unit converter.
_UNIT_ALIASES = {
    "degree": "deg", "circ": "deg",
    "ft": "foot", "feet": "foot", "in": "inch", "yd": "yard", "mi": "mile",
    "m": "meter", "metre": "meter", "cm": "centimeter", "centimetre": "centimeter",
    "mm": "millimeter", "millimetre": "millimeter", "km": "kilometer", "kilometre": "kilometer",
    "s": "second", "sec": "second", "min": "minute", "h": "hour", "hr": "hour", "hrs": "hour",
    "yr": "year", "yrs": "year", "sq": "square",
    "g": "gram", "kg": "kilogram", "mg": "milligram", "lb": "pound", "lbs": "pound", "oz": "ounce",
    "l": "liter", "litre": "liter", "ml": "milliliter", "millilitre": "milliliter",
    "mph": "mile / hour", "kph": "kilometer / hour", "per": "/",
    "dollar": "dollar", "usd": "dollar",
}  # fmt: skip
_POWER_WORDS = {"square": "2", "cubic": "3"}
_EMPTY_SET_RE = re.compile(
    r"\\varnothing|∅|\\O(?![A-Za-z])|\\left\s*\\\{\s*\\right\s*\\\}|\\\{\s*\\\}"
    r"|\\(?:" + _TEXT_COMMANDS + r")\s*\{\s*(?:the\s+)?empty\s+set\s*\}|^(?:the\s+)?empty\s+set$",
    re.IGNORECASE,
)
_E_NOTATION_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d{1,4}")
_VAR_IN_RE = re.compile(r"^[A-Za-z]\s*\\in\s*")
# A thousands separator: ",", "{,}", ",\!", "\,", a space. The first group has no leading zero, so a
# decimal comma ("0,500") is never read as thousands.
_THOUSANDS_RE = re.compile(r"[-+]?[1-9]\d{0,2}(?:(?:(?:\{,\}|,\\!|\\,)\s*|,|\\ |~| )\d{3})+(?:\.\d+)?")
_DIGIT_LIST_RE = re.compile(r"[-+]?\d+(?:,[-+]?\d+)+")
_THOUSANDS_SEP_RE = re.compile(r"\{,\}|,\\!|,|\\,|\\ |~|\s")
_REPEATING_RE = re.compile(r"(\d*)\.(\d*)\\overline\s*(?:\{(\d{1,30})\}|(\d))")
_PAREN_MATRIX_RE = re.compile(
    r"(?:\\left\s*)?\(\s*\\begin\{(?:array|matrix|smallmatrix)\}(?:\{[^{}]*\})?(.*)"
    r"\\end\{(?:array|matrix|smallmatrix)\}\s*(?:\\right\s*)?\)",
    re.DOTALL,
)
_MATRIX_RE = re.compile(r"\\begin\{([pb]?matrix)\}(.*)\\end\{\1\}", re.DOTALL)
_BASE_RE = re.compile(r"(?P<digits>[0-9A-Za-z]*[0-9][0-9A-Za-z]*)_\{?(?P<base>\d{1,2})\}?")
_PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_TEXT_WRAPPER_RE = re.compile(r"\\(?:" + _TEXT_COMMANDS + r")\s*\{([^{}]*)\}")
_SPACING_RE = re.compile(r"\\[,;: !]|~|\\quad")
_TIME_RE = re.compile(
    r"(?P<h>\d{1,2})(?::(?P<m>\d{2}))?\s*(?P<half>[ap])\.?\s*m\.?"
    r"|(?P<h24>\d{1,2}):(?P<m24>\d{2})(?:\s*(?:hours|hrs|h))?",
    re.IGNORECASE,
)
_NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split()
    )
}
_NUMBER_WORDS.update(
    {
        word: 10 * value
        for value, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)
    }
)
_FUNCTION_WORDS = {"to", "of", "or", "and", "in", "by", "for", "the", "a", "an", "on", "at", "with", "than"}
_SCALE_WORDS = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}


_CHEAP_CHARS = 500  # longer answers are prepared only in a worker: some regexes below are quadratic


def _prepare(answer: str) -> _Answer:
    """Normalise an extracted answer; string work only (no sympy)."""
    if _PLAIN_NUMBER_RE.fullmatch(answer):
        return _Answer(answer, None, None)  # most GSM8K answers: nothing to rewrite
    s = answer.strip().replace("−", "-").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    if (match := _OUTSIDE_UNIT_RE.fullmatch(s)) and _NOT_UNITS.isdisjoint(match["unit"].lower().split()):
        power = f"^{match['power']}" if match["power"] else ""
        s = f"{match['dollar'] or match['paren']}\\text{{ {match['unit'].strip()}}}{power}"
    s = _strip_delimiters(s)
    s = s.replace("\\text{\\$}", "").replace("\\$", "")  # currency
    s = _PERCENT_RE.sub(r"\\%", s)
    s = _RM_GROUP_RE.sub(r"\\text{\1}", s)
    s = _EMPTY_SET_RE.sub(r"\\emptyset", s)
    time = _time_of_day(s)
    s = _number_words_to_digits(s)

    # Units: split off the trailing unit so that it can be compared on its own (see module docstring).
    unit = None
    if _DEGREE_RE.search(s) and _DEGREE_RE.sub("", s):
        s, unit = _DEGREE_RE.sub("", s), "deg"
    match = _TEXT_UNIT_RE.fullmatch(s)
    if match is None and (match := _WORD_UNIT_RE.fullmatch(s)):
        letter = len(match["unit"]) == 1
        match = None if letter and match["unit"].lower() not in _LETTER_UNITS else match  # "4 t": a variable
    if match and _NOT_UNITS.isdisjoint(match["unit"].lower().replace("/", " ").split()):
        s, unit = match["value"], _canonical_unit(match["unit"], match["power"])
    s = _strip_delimiters(s.strip())

    s = _VAR_IN_RE.sub("", s)  # x \in [a,b] -> [a,b]; an inequality then compares as a set
    if _THOUSANDS_RE.fullmatch(s):
        s = _THOUSANDS_SEP_RE.sub("", s)
    elif _DIGIT_LIST_RE.fullmatch(s):  # "0,500" or "3,5": a list, never a decimal comma (sympy reads 0.5)
        s = s.replace(",", ", ")
    if _E_NOTATION_RE.fullmatch(s):
        s = format(Decimal(s), "f")
    s = _REPEATING_RE.sub(_repeating_to_fraction, s)
    if match := _PAREN_MATRIX_RE.fullmatch(s):
        s = f"\\begin{{pmatrix}}{match[1]}\\end{{pmatrix}}"
    if match := _MATRIX_RE.fullmatch(s):
        s = _vector_as_tuple(match)

    base = None
    if (match := _BASE_RE.fullmatch(s)) and 2 <= int(match["base"]) <= 36:
        radix = int(match["base"])
        if all(int(digit, 36) < radix for digit in match["digits"]):
            s, base = match["digits"].upper().lstrip("0") or "0", radix
    return _Answer(s, unit, base, time)


def _time_of_day(s: str) -> tuple[int, str] | None:
    """``2:30 p.m.`` -> (870, "ampm"); ``14:30`` -> (870, "24h"); ``2:30`` -> (150, "clock")."""
    flat = _SPACING_RE.sub(" ", _TEXT_WRAPPER_RE.sub(r" \1 ", s)).strip()
    match = _TIME_RE.fullmatch(flat)
    if not match:
        return None
    if match["half"]:
        hour, minute = int(match["h"]), int(match["m"] or 0)
        if not 1 <= hour <= 12 or minute > 59:
            return None
        return (hour % 12 + (12 if match["half"].lower() == "p" else 0)) * 60 + minute, "ampm"
    hour, minute = int(match["h24"]), int(match["m24"])
    if hour > 23 or minute > 59:
        return None
    fixed = hour == 0 or hour >= 13 or match["h24"].startswith("0")
    return hour * 60 + minute, "24h" if fixed else "clock"


def _number_words_to_digits(s: str) -> str:
    """``five`` -> ``5``, ``\\text{twenty-one apples}`` -> ``21 apples``, ``3 million`` -> ``3000000``."""
    wrapped = _TEXT_WRAPPER_RE.fullmatch(s)
    tokens = (wrapped[1] if wrapped else s).lower().replace("-", " ").split()
    sign, total, current, used, words = 1, Fraction(0), Fraction(0), 0, 0
    for i, token in enumerate(tokens):
        if i == 0 and token in ("minus", "negative"):
            sign = -1
        elif i == used and token in _NUMBER_WORDS:
            current += _NUMBER_WORDS[token]
            words += 1
        elif i == used and token in _SCALE_WORDS and (i > 0 or token == "hundred"):
            scale = _SCALE_WORDS[token]
            if scale == 100:
                current = (current or 1) * 100
            else:
                total, current = total + (current or 1) * scale, Fraction(0)
            words += 1
        elif i == 0 and _PLAIN_NUMBER_RE.fullmatch(token) and len(tokens) > 1 and tokens[1] in _SCALE_WORDS:
            current = Fraction(Decimal(token))
        elif (
            i == used and token == "and" and words and i + 1 < len(tokens) and tokens[i + 1] in _NUMBER_WORDS
        ):
            pass
        else:
            break
        used = i + 1
    rest = tokens[used:]
    if not words or not all(token.isalpha() for token in rest) or not _FUNCTION_WORDS.isdisjoint(rest):
        return s  # "one-to-one", "one of them": words, not a number with a unit
    value = sign * (total + current)
    number = (
        str(value.numerator)
        if value.denominator == 1
        else format(Decimal(value.numerator) / value.denominator, "f")
    )
    return " ".join([number, *rest])


def _prepare_pair(gold_answer: str, pred_answer: str | None) -> tuple[_Answer, _Answer | None]:
    return _prepare(gold_answer), (_prepare(pred_answer) if pred_answer is not None else None)


def _strip_delimiters(s: str) -> str:
    s = s.strip().rstrip(".,;").strip()
    changed = True
    while changed:
        changed = False
        for left, right in _DELIMITERS:
            inner = s[len(left) : -len(right)]
            # "$a$ and $b$" starts and ends with "$" but is not one span
            if s.startswith(left) and s.endswith(right) and inner.strip() and left not in inner:
                s, changed = inner.strip().rstrip(".,;").strip(), True
    return s


def _canonical_unit(text: str, power: str | None) -> str:
    """``square feet`` = ``ft^2`` = ``\\text{ft}^2`` -> ``foot^2``; ``miles per hour`` = ``mph`` -> ``mile/hour``."""
    words: list[str] = []
    for word in re.findall(r"[a-z]+|/", text.lower()):
        if word.endswith(("ches", "shes", "sses", "xes")):
            word = word[:-2]
        elif word.endswith("s") and len(word) > 3 and not word.endswith("ss"):
            word = word[:-1]
        words.extend(_UNIT_ALIASES.get(word, word).split())
    units: list[str] = []
    pending = None
    for word in words:
        if word in _POWER_WORDS:
            pending = _POWER_WORDS[word]
        elif word in ("squared", "cubed") and units:
            units[-1] += "^2" if word == "squared" else "^3"
        else:
            units.append(word + (f"^{pending}" if pending and word != "/" else ""))
            pending = None
    if power and power != "1" and units:
        units[-1] += f"^{power}"
    return " ".join(units).replace(" / ", "/")


def _repeating_to_fraction(match: re.Match[str]) -> str:
    r"""``0.1\overline{6}`` -> ``\frac{1}{6}``."""
    whole, fixed, repeat = match[1] or "0", match[2], match[3] or match[4]
    shift = Fraction(1, 10 ** len(fixed))
    value = int(whole) + shift * (int(fixed or "0") + Fraction(int(repeat), 10 ** len(repeat) - 1))
    if value.denominator == 1:
        return str(value.numerator)
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _vector_as_tuple(match: re.Match[str]) -> str:
    rows = [[cell.strip() for cell in row.split("&")] for row in re.split(r"\\\\", match[2]) if row.strip()]
    if len(rows) > 1 and all(len(row) == 1 for row in rows):
        return "(" + ", ".join(row[0] for row in rows) + ")"
    if len(rows) == 1 and len(rows[0]) > 1:
        return "(" + ", ".join(rows[0]) + ")"
    return match[0]


# ---------------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------------


def _as_number(value: str) -> Fraction | None:
    return Fraction(Decimal(value)) if _PLAIN_NUMBER_RE.fullmatch(value) else None


def _annotations_conflict(gold: _Answer, pred: _Answer) -> bool:
    """Units given on both sides that differ, or a prediction subscript that is not the gold's base."""
    units_differ = gold.unit is not None and pred.unit is not None and gold.unit != pred.unit
    return units_differ or (pred.base is not None and pred.base != (gold.base or 10))


def _same_time(gold: _Answer, pred: _Answer | None) -> bool | None:
    """Times of day, where either side says a.m./p.m.: None if neither does (then not a time)."""
    if "ampm" not in (gold.time and gold.time[1], pred and pred.time and pred.time[1]):
        return None
    if pred is None or gold.time is None or pred.time is None:
        return False
    if "clock" in (gold.time[1], pred.time[1]):  # one side leaves the half of the day to the question
        return gold.time[0] % 720 == pred.time[0] % 720
    return gold.time[0] == pred.time[0]


def _decide_without_sympy(gold: _Answer, pred: _Answer | None) -> bool | None:
    """Decide where that is exact and cheap: a plain-number, time or base gold. None: ask sympy."""
    same_time = _same_time(gold, pred)
    if same_time is not None:
        return same_time
    gold_number = _as_number(gold.value)
    if gold_number is None and gold.base is None:
        return None  # math-verify must also say whether the gold parses at all
    if pred is None or _annotations_conflict(gold, pred):
        return False
    if gold.base is not None or pred.base is not None:
        return gold.value.lstrip("0") == pred.value.upper().lstrip("0")
    pred_number = _as_number(pred.value)
    return None if pred_number is None else gold_number == pred_number


def _decide_cheaply(gold_answer: str, pred_answer: str | None) -> bool | None:
    return _decide_without_sympy(*_prepare_pair(gold_answer, pred_answer))


def _compare(gold_answer: str, pred_answer: str | None) -> bool | None:
    """Grade one extracted answer against one extracted gold answer (runs in a worker process)."""
    from math_verify import verify

    gold, pred = _prepare_pair(gold_answer, pred_answer)
    decided = _decide_without_sympy(gold, pred)
    if decided is not None:
        return decided
    gold_parsed = _parse(gold.value)
    if not gold_parsed:
        return None  # an unparseable gold is "unknown", never a pass
    if pred is None or _annotations_conflict(gold, pred):
        return False
    if pred.value == gold.value:
        return True
    pred_parsed = _parse(pred.value)
    # allow_set_relation_comp: an inequality prediction may match an interval gold.
    return bool(pred_parsed) and verify(
        gold_parsed, pred_parsed, allow_set_relation_comp=True, timeout_seconds=None
    )


def _grade_answers(golds: tuple[str, ...], preds: tuple[str, ...] | None, compare) -> bool | None:
    """Several boxes decided by what they mean (see the module docstring); ``compare`` grades one pair."""
    gold = ", ".join(golds)
    if preds is None or len(preds) == 1 or len(golds) > 1 or _is_multi(_prepare(gold).value):
        return compare(gold, ", ".join(preds) if preds else None)  # the boxes together state a set
    results = [compare(gold, pred) for pred in preds]  # a single value: every box must state it
    if False in results:
        return False
    return True if all(result is True for result in results) else None


def _is_multi(value: str) -> bool:
    r"""Whether a gold states several values: a top-level comma, a set ``\{...\}``, ``\pm``, "and"."""
    if value.startswith("\\{") or "\\pm" in value or "\\mp" in value or re.search(r"\band\b", value):
        return True
    depth = 0
    for char in value:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            return True
    return False


@lru_cache(maxsize=4096)  # golds repeat across samples of one problem; sympy objects are immutable
def _parse(value: str) -> list:
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse

    config = LatexExtractionConfig(
        boxed_match_priority=0,
        normalization_config=NormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
        ),
    )
    # Timeouts off: math-verify's signal.alarm would cancel the worker's own alarm (see _serve).
    return parse("\\boxed{" + value + "}", [config], fallback_mode="no_fallback", parsing_timeout=None)


# ---------------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------------

_READY, _TIMED_OUT, _DIED = "ready", "timed out", "died"
ANTLR_RUNTIME = "4.13.2"  # the antlr4 runtime math-verify's LaTeX parser is generated for
ANTLR_BESIDE = (
    "grader-antlr"  # <environment>/grader-antlr: that runtime, for an environment pinned to another
)


def _antlr_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("antlr4-python3-runtime")
    except importlib.metadata.PackageNotFoundError:
        return None


@cache
def _warn_antlr() -> None:
    logger.warning(
        "antlr4-python3-runtime %s is installed, and math-verify's LaTeX parser needs %s: some answers "
        "(e.g. 50\\%%) will be misread; `pip install --target %s antlr4-python3-runtime==%s` fixes it",
        _antlr_version(), ANTLR_RUNTIME, os.path.join(sys.prefix, ANTLR_BESIDE), ANTLR_RUNTIME,
    )  # fmt: skip


def worker_path() -> str | None:
    """A folder the workers import first, or None: ``$MATHFORGE_GRADER_PATH``; else, where this environment's
    antlr4 runtime is not 4.13.2, the 4.13.2 runtime installed in ``<sys.prefix>/grader-antlr`` if there is one.
    Hydra pins antlr4 4.9 (so verl's environment has it), and with 4.9 math-verify misreads LaTeX such as
    ``50\\%``; ``scripts/install_verl.sh`` installs the right runtime beside that environment."""
    if os.environ.get("MATHFORGE_GRADER_PATH"):
        return os.environ["MATHFORGE_GRADER_PATH"]
    beside = os.path.join(sys.prefix, ANTLR_BESIDE)
    return beside if _antlr_version() != ANTLR_RUNTIME and os.path.isdir(beside) else None


_STARTUP_SECONDS = 120.0  # importing sympy on a loaded machine
_GRACE_SECONDS = 1.0  # after the soft deadline, before the worker is killed


class _SoftTimeout(BaseException):  # BaseException: math-verify's `except Exception` must not eat it
    pass


def _on_alarm(signum, frame):
    raise _SoftTimeout


def _serve(fd: int) -> None:
    """Worker main loop: answer (gold, prediction, seconds) requests on the socket until it closes."""
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it warns that its timeouts are off
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; we stop at EOF
    conn = Connection(fd)
    _parse("1")  # import and warm up before reporting ready
    conn.send(_READY)
    while True:
        try:
            task, payload, seconds = conn.recv()
        except EOFError:
            return
        try:
            result = _run_with_alarm(task, payload, seconds)
        except _SoftTimeout:  # also when the alarm fires just as the comparison ends
            result = _TIMED_OUT
        conn.send(result)


def _run_with_alarm(task: str, payload, seconds: float) -> object:
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return _grade_answers(*payload, _compare) if task == "grade" else _mv_extract(payload)
    except Exception:
        return None  # an internal error is "unknown", never a pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _kill(proc: subprocess.Popen, conn: Connection) -> None:
    conn.close()
    if proc.poll() is None:
        proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class _Worker:
    """One math-verify subprocess (tasks: "grade" answers, "extract" one). One that overruns is killed."""

    def __init__(self, path: str | None = None) -> None:
        ours, theirs = socket.socketpair()
        env = None
        if path:
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")])),
            }
        with theirs:
            # -P: the script's folder (src/mathforge) must not shadow top-level modules.
            self.proc = subprocess.Popen(
                [sys.executable, "-P", os.path.abspath(__file__), str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
            )
        self._conn = Connection(ours.detach())
        self._ready = False
        self.alive = True
        self._finalizer = weakref.finalize(self, _kill, self.proc, self._conn)

    def ask(self, task: str, payload, seconds: float) -> object:
        if not self._ready:
            if not self._conn.poll(_STARTUP_SECONDS) or self._receive() != _READY:
                self.kill()
                raise RuntimeError("grader worker did not start (see its stderr)")
            self._ready = True
        try:
            self._conn.send((task, payload, seconds))
        except OSError:
            self.kill()
            return _DIED
        if self._conn.poll(seconds + _GRACE_SECONDS):
            return self._receive()
        self.kill()
        return _TIMED_OUT

    def _receive(self) -> object:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self.kill()
            return _DIED

    def kill(self) -> None:
        self.alive = False
        self._finalizer()


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    maxsize: int
    currsize: int


class Grader:
    """Grades answers with a time bound per call, a pool of math-verify workers and an LRU cache.

    Args:
        timeout: seconds a comparison may take before it is "unknown" (``None``). A worker that does
            not answer within ``timeout`` + 1 s is killed and replaced. Starting a worker (importing
            sympy, a few seconds, once per worker) is not counted.
        cache_size: (prediction answer, gold answer) pairs remembered; 0 turns the cache off.
        workers: worker processes, i.e. how many comparisons run in parallel (threads calling
            :meth:`grade` share them; :meth:`grade_many` uses them all).

    Thread-safe. Workers start on first use and stop on :meth:`close` or interpreter exit.
    """

    def __init__(self, timeout: float = 5.0, cache_size: int = 65536, workers: int = 1) -> None:
        if timeout <= 0 or cache_size < 0 or workers < 1:
            raise ValueError("need timeout > 0, cache_size >= 0, workers >= 1")
        self.timeout, self.cache_size, self.workers = timeout, cache_size, workers
        self._cache: OrderedDict[tuple[str | None, str], bool | None] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._hits = self._misses = 0
        self._path = worker_path()
        if self._path is None and _antlr_version() != ANTLR_RUNTIME:
            _warn_antlr()
        self._start_pool()

    def grade(self, prediction: str, gold: str, extraction: str = "strict") -> bool | None:
        """Whether ``prediction`` (a completion or a bare answer) answers like ``gold``.

        ``gold`` is a LaTeX or plain answer, or a full reference solution with ``\\boxed{}`` or
        ``####`` (read with the strict policy). ``extraction`` is how the prediction's answer is found,
        one of :data:`EXTRACTION_POLICIES` (see the module docstring). Returns True/False, or None when
        the gold cannot be parsed or time ran out.
        """
        golds = _answers_in(gold, "strict")
        if golds is None:
            return None
        preds = self._answers(prediction, extraction)
        if preds == _TIMED_OUT:
            return None
        key = (preds, golds)
        with self._cache_lock:
            if key in self._cache:
                self._hits += 1
                self._cache.move_to_end(key)
                return self._cache[key]
            self._misses += 1
        result = None
        if sum(map(len, golds)) + sum(map(len, preds or ())) <= _CHEAP_CHARS:
            result = _grade_answers(golds, preds, _decide_cheaply)
        if result is None:
            result = self._ask_worker("grade", (golds, preds))
        if result in (_TIMED_OUT, _DIED):
            return None  # not cached: running out of time may be the machine's fault, not the input's
        if self.cache_size:
            with self._cache_lock:
                self._cache[key] = result
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return result

    def grade_many(
        self, predictions: Sequence[str], golds: Sequence[str], extraction: str | Sequence[str] = "strict"
    ) -> list[bool | None]:
        """:meth:`grade` for each (prediction, gold) pair, in order, using all workers.

        ``extraction``: one policy for all pairs, or one per pair.
        """
        if len(predictions) != len(golds):
            raise ValueError(f"{len(predictions)} predictions but {len(golds)} golds")
        policies = [extraction] * len(golds) if isinstance(extraction, str) else list(extraction)
        if len(policies) != len(golds):
            raise ValueError(f"{len(policies)} extraction policies but {len(golds)} golds")
        for policy in set(policies):
            _check_policy(policy)
        if self.workers == 1:
            return [self.grade(p, g, e) for p, g, e in zip(predictions, golds, policies)]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.grade, predictions, golds, policies))

    def final_answer(self, text: str, extraction: str = "strict") -> str | None:
        """The answer :meth:`grade` compares for ``text`` (several boxes joined by ", "), or None."""
        answers = self._answers(text, extraction)
        return ", ".join(answers) if answers and answers != _TIMED_OUT else None

    def _answers(self, text: str, extraction: str):
        """The prediction's answers; for ``"any"`` with no marker, math-verify's extraction in a worker."""
        answers = _answers_in(text, extraction)
        if answers is None and extraction == "any" and text.strip():
            found = self._ask_worker("extract", text)
            if found in (_TIMED_OUT, _DIED):
                return _TIMED_OUT
            answers = (found,) if found else None
        return answers

    def cache_info(self) -> CacheInfo:
        with self._cache_lock:
            return CacheInfo(self._hits, self._misses, self.cache_size, len(self._cache))

    def cache_clear(self) -> None:
        with self._cache_lock:
            self._cache.clear()
            self._hits = self._misses = 0

    def close(self) -> None:
        """Stop the idle workers (busy ones stop when their process object is collected)."""
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _start_pool(self) -> None:
        self._pid = os.getpid()
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(self.workers)

    def _ask_worker(self, task: str, payload) -> object:
        if self._pid != os.getpid():  # a forked copy: the workers' sockets belong to the parent
            self._start_pool()
        result = _DIED
        for _ in range(2):  # once more if the worker had died (e.g. killed from outside)
            with self._slots:
                try:
                    worker = self._idle.get_nowait()
                except queue.Empty:
                    worker = _Worker(self._path)
                try:
                    result = worker.ask(task, payload, self.timeout)
                finally:
                    # A dead worker is replaced now, so the next call finds it (nearly) started.
                    self._idle.put(worker if worker.alive else _Worker(self._path))
            if result != _DIED:
                break
        return result

    def _worker_pids(self) -> list[int]:
        """Process ids of the idle workers (for tests)."""
        workers = []
        while True:
            try:
                workers.append(self._idle.get_nowait())
            except queue.Empty:
                break
        for worker in workers:
            self._idle.put(worker)
        return [worker.proc.pid for worker in workers]


_default_grader = Grader()


def grade(prediction: str, gold: str, extraction: str = "strict") -> bool | None:
    """:meth:`Grader.grade` with a shared default :class:`Grader` (5 s timeout, 1 worker)."""
    return _default_grader.grade(prediction, gold, extraction)


def final_answer(text: str, extraction: str = "strict") -> str | None:
    """:meth:`Grader.final_answer` with the shared default :class:`Grader`: what is graded, for reports."""
    return _default_grader.final_answer(text, extraction)


if __name__ == "__main__":  # a worker process, started by _Worker
    _serve(int(sys.argv[1]))
