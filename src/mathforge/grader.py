r"""Answer grading: is a model's final answer equal to the reference ("gold") answer?

Data synthesis, SFT filtering, RL rewards and evaluation all decide "correct" here, and both failure
modes cost: a false "correct" poisons training data, a false "wrong" poisons preference pairs. The
mathematics is HuggingFace ``math-verify`` (sympy); this module is the normalisation around it:

* :func:`extract_answer` finds the final answer in a completion: the last ``\boxed{}``/``\fbox{}``,
  else a trailing "the answer is ...", else a GSM8K ``#### N`` line.
* ``_prepare`` rewrites notations that math-verify misses or gets wrong, and splits off units and
  numeral bases so that they are compared on their own.
* Plain numbers on both sides are compared exactly, without sympy (most GSM8K-style calls).
* Everything else runs math-verify in worker subprocesses. Each request has a soft deadline (an alarm
  in the worker) and a hard one (the worker is killed and replaced), so a call returns in bounded time
  from any thread, whatever the input.
* Results are cached per (prediction answer, gold answer), LRU; a run out of time is not cached.

Results: ``True`` equal; ``False`` different, or the prediction has no usable answer; ``None``
unknown: the gold has no parseable answer, or the comparison ran out of time. ``None`` is never a
pass; treat it as "not correct" and count it separately where that matters.

Decisions where notation is ambiguous (we prefer a false "wrong" to a false "correct"):

* The last box counts (a corrected answer follows a first attempt). An unclosed last box (a truncated
  completion) means no answer. Text with no marker is taken whole as the answer only if it is one line.
* Plain numbers compare exactly: ``18`` = ``\$18.00`` = ``18.0``, but ``0.333`` != ``0.3333``.
  math-verify's 6-decimal rounding applies only against a non-literal (``\frac13`` = ``0.333333``).
* Thousands separators ``10,\!080``, ``10{,}080``, ``10,080`` mean 10080; ``10, 080`` is a list.
* Repeating decimals: ``0.\overline{3}`` = ``\frac13``; ``0.33`` is not.
* Percent follows math-verify: ``X\%`` equals both ``X`` and ``X/100`` (``50\%`` = ``50`` = ``0.5``).
* Units: a unit on one side only is ignored (``10\text{ cm}`` = ``10``, either way round); units on
  both sides must agree after a small alias table (``10\text{ m}`` != ``10\text{ cm}``,
  ``\text{cm}^2`` != ``\text{cm}``). No unit conversion: ``1\text{ m}`` != ``100\text{ cm}``.
  math-verify's own unit stripping is off: it drops trailing letters such as ``t``, so ``4t`` = ``4``.
* Degrees are a unit: ``30^\circ`` = ``30`` = ``30\text{ degrees}``, but not ``\frac{\pi}{6}``.
* Bases: ``52_8`` = ``52`` (subscript left out) but != ``42`` (its decimal value); a prediction's
  subscript must match the gold's (gold ``52``, prediction ``52_8`` is wrong).
* ``x=3`` = ``3``, but ``x=3`` != ``y=3`` (math-verify). ``x \in [-2,7]`` = ``-2 \le x \le 7`` = ``[-2,7]``.
* A one-row or one-column matrix is the tuple of its entries; tuples are ordered: ``(1,2)`` != ``(2,1)``.
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
from functools import lru_cache
from multiprocessing.connection import Connection
from typing import NamedTuple

__all__ = ["CacheInfo", "Grader", "extract_answer", "grade"]

# ---------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_IS_RE = re.compile(r"\banswer\s+is\b\s*:?", re.IGNORECASE)
# Regexes that see whole completions are kept linear-time: they run in the caller, outside any timeout.
_GSM8K_RE = re.compile(r"^[ \t]*####[ \t]*(\S.*)", re.MULTILINE)
_LEADING_MATH_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_HOPE_RE = re.compile(r"I hope it is correct\.?$", re.IGNORECASE)


def extract_answer(text: str) -> str | None:
    r"""Return the final answer written in ``text``, or ``None`` if it marks none.

    In order: the content of the last ``\boxed{...}``/``\fbox{...}`` (nested braces fine; an unclosed
    last box gives ``None``); else what follows the last "answer is" (e.g. "The final answer is
    $\frac12$. I hope it is correct." gives ``\frac12``); else the last GSM8K ``#### N`` line.
    """
    boxes = list(_BOX_RE.finditer(text))
    if boxes:
        return _braced(text, boxes[-1].end())
    answer_is = list(_ANSWER_IS_RE.finditer(text))
    if answer_is:
        return _answer_after(text[answer_is[-1].end() :])
    hashes = _GSM8K_RE.findall(text)
    return hashes[-1].strip() if hashes else None


def _braced(text: str, start: int) -> str | None:
    """The content of the ``{...}`` group that opens at ``start`` (after spaces), if it closes."""
    i = start
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
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
                return text[i + 1 : j].strip() or None
        j += 1
    return None


def _answer_after(rest: str) -> str | None:
    """The answer in the text after "answer is": a leading math span, else the rest of the line."""
    rest = _HOPE_RE.sub("", rest.replace("**", "").strip()).strip()
    math = _LEADING_MATH_RE.match(rest)
    if math:
        answer = next(group for group in math.groups() if group is not None)
    else:
        answer = rest.split("\n", 1)[0]
    return answer.strip().rstrip(".").strip() or None


def _answer_text(text: str) -> str | None:
    """The answer to grade: the marked one, else the whole text if it is a single line."""
    answer = extract_answer(text)
    if answer is None and not _BOX_RE.search(text):  # an empty or unclosed box is no answer
        text = text.strip()
        answer = text if text and "\n" not in text else None
    return answer


# ---------------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------------


class _Answer(NamedTuple):
    value: str  # normalised LaTeX or plain text, units and base subscript removed
    unit: str | None  # canonical unit, e.g. "centimeter^2", "deg"
    base: int | None  # numeral base of a subscript such as 52_8


_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_PERCENT_RE = re.compile(r"\\text\{\s*percent\s*\}|\bpercent\b|(?<!\\)%")
_DEGREE_RE = re.compile(r"(?:\s|\\[,;: !])*(?:\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°)\s*$")
_TEXT_UNIT_RE = re.compile(
    r"(?P<value>.*?\S)\s*(?:\\[,;: !]\s*)*\\(?:text|mbox|mathrm|textrm|textnormal)\s*"
    r"\{(?P<unit>\s*[A-Za-z][A-Za-z .]*)\}(?:\^\s*\{?(?P<power>\d)\}?)?"
)
_WORD_UNIT_RE = re.compile(r"(?P<value>[-+]?[\d.,]*\d)\s+(?P<unit>[A-Za-z]{2,}(?:\s+[A-Za-z]+)*)")
# Trailing words that change the value, so must not be split off as a unit ("2\mathrm{i}", "3 million").
_NOT_UNITS = {"i", "e", "pi", "and", "or", "sqrt", "hundred", "thousand", "million", "billion", "trillion"}
# Enough aliases that common spellings of one unit agree; not a unit converter.
_UNIT_ALIASES = {
    "degree": "deg", "circ": "deg",
    "ft": "foot", "feet": "foot", "in": "inch", "yd": "yard", "mi": "mile",
    "m": "meter", "metre": "meter", "cm": "centimeter", "centimetre": "centimeter",
    "mm": "millimeter", "millimetre": "millimeter", "km": "kilometer", "kilometre": "kilometer",
    "s": "second", "sec": "second", "min": "minute", "h": "hour", "hr": "hour", "hrs": "hour",
    "sq": "square", "dollar": "dollar", "usd": "dollar",
}  # fmt: skip
_VAR_IN_RE = re.compile(r"^[A-Za-z]\s*\\in\s*")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:(?:(?:\{,\}|,\\!|\\,)\s*|,)\d{3})+(?:\.\d+)?")
_THOUSANDS_SEP_RE = re.compile(r"\{,\}|,\\!|,|\\,|\s")
_REPEATING_RE = re.compile(r"(\d*)\.(\d*)\\overline\s*(?:\{(\d{1,30})\}|(\d))")
_MATRIX_RE = re.compile(r"\\begin\{([pb]?matrix)\}(.*)\\end\{\1\}", re.DOTALL)
_BASE_RE = re.compile(r"(?P<digits>[0-9A-Za-z]*[0-9][0-9A-Za-z]*)_\{?(?P<base>\d{1,2})\}?")
_PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")


_CHEAP_CHARS = 500  # longer answers are prepared only in a worker: some regexes below are quadratic


def _prepare(answer: str) -> _Answer:
    """Normalise an extracted answer; string work only (no sympy)."""
    s = answer.strip().replace("−", "-").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _strip_delimiters(s)
    s = s.replace("\\text{\\$}", "").replace("\\$", "")  # currency
    s = _PERCENT_RE.sub(r"\\%", s)

    # Units: split off the trailing unit so that it can be compared on its own (see module docstring).
    unit = None
    if _DEGREE_RE.search(s) and _DEGREE_RE.sub("", s):
        s, unit = _DEGREE_RE.sub("", s), "deg"
    match = _TEXT_UNIT_RE.fullmatch(s) or _WORD_UNIT_RE.fullmatch(s)
    if match and _NOT_UNITS.isdisjoint(match["unit"].lower().split()):
        s, unit = match["value"], _canonical_unit(match["unit"], match.groupdict().get("power"))
    s = _strip_delimiters(s.strip())

    s = _VAR_IN_RE.sub("", s)  # x \in [a,b] -> [a,b]; an inequality then compares as a set
    if _THOUSANDS_RE.fullmatch(s):
        s = _THOUSANDS_SEP_RE.sub("", s)
    s = _REPEATING_RE.sub(_repeating_to_fraction, s)
    if match := _MATRIX_RE.fullmatch(s):
        s = _vector_as_tuple(match)

    base = None
    if (match := _BASE_RE.fullmatch(s)) and 2 <= int(match["base"]) <= 36:
        radix = int(match["base"])
        if all(int(digit, 36) < radix for digit in match["digits"]):
            s, base = match["digits"].upper().lstrip("0") or "0", radix
    return _Answer(s, unit, base)


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
    words = []
    for word in re.findall(r"[a-z]+", text.lower()):
        if word.endswith(("ches", "shes", "sses", "xes")):
            word = word[:-2]
        elif word.endswith("s") and len(word) > 3 and not word.endswith("ss"):
            word = word[:-1]
        words.append(_UNIT_ALIASES.get(word, word))
    return " ".join(words) + (f"^{power}" if power and power != "1" else "")


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


def _decide_without_sympy(gold: _Answer, pred: _Answer | None) -> bool | None:
    """Decide where that is exact and cheap: a plain-number or base-subscript gold. None: ask sympy."""
    gold_number = _as_number(gold.value)
    if gold_number is None and gold.base is None:
        return None  # math-verify must also say whether the gold parses at all
    if pred is None or _annotations_conflict(gold, pred):
        return False
    if gold.base is not None or pred.base is not None:
        return gold.value.lstrip("0") == pred.value.upper().lstrip("0")
    pred_number = _as_number(pred.value)
    return None if pred_number is None else gold_number == pred_number


def _compare(gold_answer: str, pred_answer: str | None) -> bool | None:
    """Grade an extracted answer against an extracted gold answer (runs in a worker process)."""
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
            gold, pred, seconds = conn.recv()
        except EOFError:
            return
        try:
            result = _compare_with_alarm(gold, pred, seconds)
        except _SoftTimeout:  # also when the alarm fires just as the comparison ends
            result = _TIMED_OUT
        conn.send(result)


def _compare_with_alarm(gold: str, pred: str | None, seconds: float) -> object:
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return _compare(gold, pred)
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
    """One math-verify subprocess. A worker that overruns is killed, never waited for."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            # -P: the script's folder (src/mathforge) must not shadow top-level modules.
            self.proc = subprocess.Popen(
                [sys.executable, "-P", os.path.abspath(__file__), str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        self._conn = Connection(ours.detach())
        self._ready = False
        self.alive = True
        self._finalizer = weakref.finalize(self, _kill, self.proc, self._conn)

    def ask(self, gold: str, pred: str | None, seconds: float) -> object:
        if not self._ready:
            if not self._conn.poll(_STARTUP_SECONDS) or self._receive() != _READY:
                self.kill()
                raise RuntimeError("grader worker did not start (see its stderr)")
            self._ready = True
        try:
            self._conn.send((gold, pred, seconds))
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
        self._start_pool()

    def grade(self, prediction: str, gold: str) -> bool | None:
        """Whether ``prediction`` (a completion or a bare answer) answers like ``gold``.

        ``gold`` is a LaTeX or plain answer, or a full reference solution with a ``\\boxed{}`` or
        ``####`` line. Returns True/False, or None when the gold cannot be parsed or time ran out.
        """
        gold_answer = _answer_text(gold)
        if gold_answer is None:
            return None
        pred_answer = _answer_text(prediction)
        key = (pred_answer, gold_answer)
        with self._cache_lock:
            if key in self._cache:
                self._hits += 1
                self._cache.move_to_end(key)
                return self._cache[key]
            self._misses += 1
        result = None
        if len(gold_answer) + len(pred_answer or "") <= _CHEAP_CHARS:
            result = _decide_without_sympy(*_prepare_pair(gold_answer, pred_answer))
        if result is None:
            result = self._ask_worker(gold_answer, pred_answer)
        if result in (_TIMED_OUT, _DIED):
            return None  # not cached: running out of time may be the machine's fault, not the input's
        if self.cache_size:
            with self._cache_lock:
                self._cache[key] = result
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return result

    def grade_many(self, predictions: Sequence[str], golds: Sequence[str]) -> list[bool | None]:
        """:meth:`grade` for each (prediction, gold) pair, in order, using all workers."""
        if len(predictions) != len(golds):
            raise ValueError(f"{len(predictions)} predictions but {len(golds)} golds")
        if self.workers == 1:
            return [self.grade(p, g) for p, g in zip(predictions, golds)]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.grade, predictions, golds))

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

    def _ask_worker(self, gold_answer: str, pred_answer: str | None) -> bool | None | str:
        if self._pid != os.getpid():  # a forked copy: the workers' sockets belong to the parent
            self._start_pool()
        result = _DIED
        for _ in range(2):  # once more if the worker had died (e.g. killed from outside)
            with self._slots:
                try:
                    worker = self._idle.get_nowait()
                except queue.Empty:
                    worker = _Worker()
                try:
                    result = worker.ask(gold_answer, pred_answer, self.timeout)
                finally:
                    # A dead worker is replaced now, so the next call finds it (nearly) started.
                    self._idle.put(worker if worker.alive else _Worker())
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


def grade(prediction: str, gold: str) -> bool | None:
    """:meth:`Grader.grade` with a shared default :class:`Grader` (5 s timeout, 1 worker)."""
    return _default_grader.grade(prediction, gold)


if __name__ == "__main__":  # a worker process, started by _Worker
    _serve(int(sys.argv[1]))
