"""`mathforge data toy`: procedurally generated math word problems with exact answers.

The toy task lets a ~1M-parameter model show real learning on CPU. Problems come from seven
families (:data:`FAMILIES`) at three levels (1 = one or two operations on small numbers, 3 = four or
more steps on three-digit numbers, sometimes with an irrelevant sentence). The numbers are chosen so
that a tiny model cannot do the arithmetic in its head: it has to copy them exactly into code
(``print(347 * 28)``) and let the executor compute. Wrong code is then a realistic failure: a wrong
operation, a number copied wrong, a missed step.

Each record::

    {"id", "problem", "answer", "family", "level", "kind", "params", "solution"}

* ``answer`` is a plain string, an integer (``"42"``, ``"-5"``) or a reduced fraction (``"7/3"``,
  ``"-7/3"``): exactly what Python prints for an ``int`` or a ``fractions.Fraction``. No LaTeX, so
  the teacher's last printed line *is* the answer.
* ``solution`` is a teacher solution in the step format of :mod:`mathforge.steps`, whose
  ``<output>`` blocks come from running the teacher code through :mod:`mathforge.executor`; the
  final printed line is checked against the answer, so every teacher solution is known correct.
  Its length varies on purpose (a per-problem seeded choice of a short, standard or verbose
  style: restating the problem, printing intermediate values, re-checking with ``assert``), and most
  short and standard solutions (``recheck_rate``, 0.75) go on after the answer is printed with a step
  that re-reads the problem and prints the answer again: redundancy that costs no accuracy to drop,
  like the re-verification in long reasoning traces, so that stage-2 RL has verbosity to cut. (Greedy
  decoding follows a solution's most likely course, so a stage-1 policy writes these re-checks only because most
  teacher solutions do; a minority style such as verbose hardly shows in its greedy solutions.)
* ``kind`` and ``params`` describe the underlying math problem (independent of wording, names and
  objects); ``id`` is a hash of them.

Splits cannot overlap: a problem's split is decided by the hash of its ``(family, kind, params)``,
so the same math problem, however worded, can only ever be in one split (:func:`check_disjoint`).
Same seed, same arguments: byte-identical files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from mathforge.config import write_atomic
from mathforge.errors import UserError
from mathforge.steps import SYSTEM_PROMPT, Step, boxed_answer, render_solution

FAMILIES = ("arithmetic", "percent", "linear", "fraction", "gcd_lcm", "modular", "counting")
LEVELS = (1, 2, 3)
SPLITS = ("train", "test")
TEST_SHARE = 0.2  # share of the problem space (by hash) that belongs to the test split
STYLES = ("short", "standard", "verbose")
STYLE_WEIGHTS = (3, 4, 3)
RECHECK_RATE = 0.75
# opens the re-check step (scripts/rl_tokens.py counts the solutions that carry it)
RECHECK_COMMENT = "# Double-check before answering."

NAMES = (
    "Ava", "Ben", "Chloe", "Diego", "Emma", "Farah", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Mateo",
    "Nina", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Victor", "Wen", "Ximena", "Yusuf", "Zoe",
    "Amir", "Bianca", "Carlos", "Dana", "Eli", "Freya", "Hugo", "Iris", "Jonas", "Kira", "Leo", "Maya", "Noah",
)  # fmt: skip
OBJECTS = (
    "stickers", "marbles", "stamps", "coins", "cards", "beads", "shells", "pencils", "apples", "cookies",
    "books", "buttons", "erasers", "crayons", "seeds", "bottles", "tickets", "candles", "ribbons", "blocks",
)  # fmt: skip
ITEMS = ("jacket", "bicycle", "laptop", "lamp", "guitar", "backpack", "camera", "sofa", "watch", "printer")

FRACTION_IMPORT = "from fractions import Fraction"
MATH_IMPORT = "import math"


# --------------------------------------------------------------------------------------------------
# A problem "plan": the text, the exact answer, and the computation as named units from which the
# teacher program is rendered in one of several styles.


@dataclass
class Unit:
    """One computation of the teacher: a reasoning comment and code assigning ``var``.

    ``code`` is a template: ``{name}`` stands for a given number, filled in either as the literal
    (``347``) or as a variable defined in a restating step (``boxes``).
    """

    comment: str
    code: str
    var: str


@dataclass
class Plan:
    kind: str
    params: dict[str, int | str]
    text: str
    answer: int | Fraction
    goal: str  # one-line restatement of what is asked, for verbose solutions
    givens: list[tuple[str, int, str]]  # (variable name, value, description)
    units: list[Unit]
    check: str | None = None  # a boolean expression template that must be True
    imports: tuple[str, ...] = ()


def _sign(v: int) -> str:
    """``+ 7`` / ``- 7`` for writing ``3x + 7`` in problem text."""
    return f"+ {v}" if v >= 0 else f"- {-v}"


def _pick(rng: random.Random, options):
    return options[rng.randrange(len(options))]


def _two_names(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(NAMES, 2)
    return a, b


# --------------------------------------------------------------------------------------------------
# Family: multi-step arithmetic stories (a quantity changed by a chain of operations).

# op -> (collection phrasings, money phrasings); {n} name, {o} other, {obj}, {k}/{m}/{d}/{f}/{e}/{e1}
_ARITH_TEXT = {
    "start": (
        ["{n} has {v} {obj}.", "{n} starts with {v} {obj}.", "There are {v} {obj} in {n}'s collection."],
        ["{n} has ${v}.", "{n} starts the month with ${v}.", "{n}'s savings are ${v}."],
    ),
    "group_add": (
        [
            "{n} buys {k} packs of {obj} with {m} in each pack.",
            "Then {n} gets {k} boxes that hold {m} {obj} each.",
            "{o} gives {n} {k} bags with {m} {obj} in every bag.",
        ],
        [
            "{n} works {k} hours at ${m} per hour.",
            "{n} sells {k} drawings for ${m} each.",
            "{n} earns ${m} a day for {k} days.",
        ],
    ),
    "group_sub": (
        [
            "{n} gives {k} friends {m} {obj} each.",
            "{n} fills {k} jars with {m} {obj} in each jar and gives the jars away.",
        ],
        ["{n} buys {k} tickets at ${m} each.", "{n} pays for {k} lunches that cost ${m} each."],
    ),
    "add": (
        ["{n} finds {d} more {obj}.", "{o} gives {n} another {d} {obj}."],
        ["{n} gets a gift of ${d}.", "{o} pays {n} back ${d}."],
    ),
    "sub": (
        ["{n} loses {d} {obj}.", "{n} gives {d} {obj} to {o}.", "{d} of the {obj} are lost."],
        ["{n} spends ${d} on a {item}.", "{n} pays a bill of ${d}."],
    ),
    "mul": (
        [
            "{n} ends up with {f} times as many {obj} as before.",
            "Then the number of {obj} {n} has is multiplied by {f}.",
        ],
        [
            "{n} invests the money and it grows to {f} times as much.",
            "The money {n} has becomes {f} times larger.",
        ],
    ),
    "share": (
        [
            "{n} splits the {obj} equally into {e} boxes and keeps only one box.",
            "{n} shares the {obj} equally with {e1} friends and keeps one share.",
        ],
        [
            "{n} divides the money equally into {e} envelopes and keeps one envelope.",
            "{n} splits the money equally with {e1} friends and keeps one share.",
        ],
    ),
}
_MUL_WORDS = {2: ["doubles"], 3: ["triples"]}
_ARITH_QUESTION = (
    [
        "How many {obj} does {n} have now?",
        "How many {obj} does {n} end up with?",
        "How many {obj} does {n} have at the end?",
    ],
    ["How many dollars does {n} have now?", "How much money, in dollars, does {n} have in the end?"],
)
_ARITH_DISTRACTOR = (
    ["{o} has {z} {obj}.", "{o}'s brother has {z} {obj2}."],
    ["{o} has ${z}.", "A {item} costs ${z}, but {n} does not buy it."],
)


def _arithmetic(rng: random.Random, level: int) -> Plan:
    n, o = _two_names(rng)
    obj, obj2 = rng.sample(OBJECTS, 2)
    money = rng.random() < 0.4
    theme = 1 if money else 0
    var = "money" if money else obj
    item = _pick(rng, ITEMS)
    small, big = {1: ((11, 49), (20, 99)), 2: ((12, 99), (100, 999)), 3: ((12, 99), (100, 999))}[level]
    if level == 1:
        ops = ["group_add", _pick(rng, ["add", "sub"])]
    elif level == 2:
        ops = [
            _pick(rng, ["group_add", "group_sub"]),
            _pick(rng, ["add", "sub"]),
            _pick(rng, ["mul", "add", "sub"]),
        ]
    else:
        ops = ["group_add", _pick(rng, ["group_sub", "mul"]), _pick(rng, ["add", "sub"]), "share"]
    rng.shuffle(ops)
    if "share" in ops:  # sharing reads best at the end
        ops.remove("share")
        ops.append("share")

    value = rng.randint(*big)
    start = value
    sentences = [_pick(rng, _ARITH_TEXT["start"][theme]).format(n=n, v=value, obj=obj)]
    givens: list[tuple[str, int, str]] = [("start", value, "at the start")]
    units = [Unit(f"{n} starts with {value} {'dollars' if money else obj}", f"{var} = {{start}}", var)]
    recompute = "{start}"  # the whole chain in one expression, for the verbose re-check
    trace = []
    used: dict[str, int] = {}

    def name(base: str) -> str:
        used[base] = used.get(base, 0) + 1
        return base if used[base] == 1 else f"{base}_{used[base]}"

    for op in ops:
        if op == "sub" and value < 30:
            op = "add"
        if op == "group_sub" and value < 4 * 11:
            op = "group_add"
        if op == "share":
            divisors = [e for e in range(2, 10) if value % e == 0]
            if not divisors:
                op = "add"
        fmt = dict(n=n, o=o, obj=obj, obj2=obj2, item=item)
        if op in ("group_add", "group_sub"):
            k = rng.randint(*small) if op == "group_add" else rng.randint(2, 12)
            m = rng.randint(*small) if level == 1 else rng.randint(12, 99 if level == 2 else 299)
            if op == "group_sub":
                m = min(m, (value - 1) // k)
                if m < 2:
                    k, m = 2, max(1, (value - 1) // 2)
            kn, mn = (
                name("groups" if op == "group_add" else "groups_out"),
                name("each" if op == "group_add" else "each_out"),
            )
            givens += [(kn, k, "groups"), (mn, m, "in each group")]
            sign = "+" if op == "group_add" else "-"
            value = value + k * m if op == "group_add" else value - k * m
            what = "more" if op == "group_add" else "fewer"
            units.append(Unit(f"{k} x {m} {what}", f"{var} = {var} {sign} {{{kn}}} * {{{mn}}}", var))
            recompute = f"({recompute} {sign} {{{kn}}} * {{{mn}}})"
            fmt.update(k=k, m=m)
            trace.append(f"{op}:{k}x{m}")
        elif op in ("add", "sub"):
            d = rng.randint(*big) if op == "add" else rng.randint(10, min(value - 1, big[1]))
            dn = name("added" if op == "add" else "removed")
            givens.append((dn, d, "added" if op == "add" else "taken away"))
            sign = "+" if op == "add" else "-"
            value = value + d if op == "add" else value - d
            units.append(
                Unit(f"{d} {'more' if op == 'add' else 'fewer'}", f"{var} = {var} {sign} {{{dn}}}", var)
            )
            recompute = f"({recompute} {sign} {{{dn}}})"
            fmt.update(d=d)
            trace.append(f"{op}:{d}")
        elif op == "mul":
            f = rng.randint(2, 3 if level < 3 else 5)
            fn = name("factor")
            givens.append((fn, f, "growth factor"))
            value *= f
            units.append(Unit(f"{f} times as many as before", f"{var} = {var} * {{{fn}}}", var))
            recompute = f"{recompute} * {{{fn}}}"
            fmt.update(f=f)
            trace.append(f"mul:{f}")
        else:  # share: keep one of e equal parts (e divides the value, so the division is exact)
            e = _pick(rng, divisors)
            en = name("shares")
            givens.append((en, e, "equal shares"))
            value //= e
            units.append(Unit(f"{n} keeps one of {e} equal shares", f"{var} = {var} // {{{en}}}", var))
            recompute = f"{recompute} // {{{en}}}"
            fmt.update(e=e, e1=e - 1)
            trace.append(f"share:{e}")
        if op == "mul" and fmt["f"] in _MUL_WORDS and not money and rng.random() < 0.5:
            sentence = f"Then {n}'s collection of {obj} {_pick(rng, _MUL_WORDS[fmt['f']])}."
        else:
            sentence = _pick(rng, _ARITH_TEXT[op][theme]).format(**fmt)
        sentences.append(sentence)

    if level == 3 and not trace[-1].startswith("share"):  # value was not divisible: draw again
        return _arithmetic(rng, level)
    if level == 3 and rng.random() < 0.5:  # an irrelevant number the solver must ignore
        z = rng.randint(*big)
        sentences.insert(
            rng.randint(1, len(sentences)),
            _pick(rng, _ARITH_DISTRACTOR[theme]).format(n=n, o=o, z=z, obj=obj, obj2=obj2, item=item),
        )
    question = _pick(rng, _ARITH_QUESTION[theme]).format(n=n, obj=obj)
    noun = "dollars" if money else obj
    return Plan(
        kind="story",
        params={"start": start, "ops": ",".join(trace)},
        text=" ".join(sentences + [question]),
        answer=value,
        goal=f"how many {noun} {n} has at the end",
        givens=givens,
        units=units,
        check=f"{var} == {recompute}",
    )


# --------------------------------------------------------------------------------------------------
# Family: percentages.


def _percent(rng: random.Random, level: int) -> Plan:
    n, _ = _two_names(rng)
    item = _pick(rng, ITEMS)
    obj = _pick(rng, OBJECTS)
    imports = (FRACTION_IMPORT,)
    if level == 1 and rng.random() < 0.6:
        p = rng.randint(1, 99)
        story = rng.random() < 0.6
        if story:  # a count of things must be a whole number
            step = 100 // math.gcd(p, 100)
            total = step * rng.randint(max(1, 20 // step), 2000 // step)
            text = _pick(
                rng,
                [
                    "{n} answered {p}% of the {t} questions on a test correctly. How many questions did {n} answer correctly?",
                    "A school has {t} students, and {p}% of them walk to school. How many students walk to school?",
                    "Of the {t} {obj} in a box, {p}% are red. How many red {obj} are there?",
                ],
            )
        else:
            total = rng.randint(10, 9999)
            text = _pick(
                rng,
                [
                    "What is {p}% of {t}?",
                    "Find {p} percent of {t}.",
                    "Compute {p}% of {t}. Give the exact value.",
                ],
            )
        answer = Fraction(p, 100) * total
        return Plan(
            kind="percent_of",
            params={"p": p, "total": total},
            text=text.format(n=n, p=p, t=total, obj=obj),
            answer=answer,
            goal=f"{p}% of {total}",
            givens=[("p", p, "percent"), ("total", total, "the whole")],
            units=[Unit(f"{p}% of {total} is {p}/100 of it", "part = Fraction({p}, 100) * {total}", "part")],
            check="part * 100 == {p} * {total}",
            imports=imports,
        )
    if level == 1:
        whole = rng.randint(20, 999)
        part = rng.randint(1, whole - 1)
        text = _pick(
            rng,
            [
                "{b} is what percent of {a}?",
                "What percent of {a} is {b}?",
                "{n} scored {b} points out of {a}. What percentage of the points did {n} score?",
            ],
        )
        return Plan(
            kind="what_percent",
            params={"part": part, "whole": whole},
            text=text.format(n=n, a=whole, b=part) + " Give the exact value.",
            answer=Fraction(part, whole) * 100,
            goal=f"{part} as a percent of {whole}",
            givens=[("part", part, "the part"), ("whole", whole, "the whole")],
            units=[
                Unit(
                    f"the ratio {part}/{whole}, times 100",
                    "percent = Fraction({part}, {whole}) * 100",
                    "percent",
                )
            ],
            check="percent * {whole} == {part} * 100",
            imports=imports,
        )
    if level == 2:
        p = rng.randint(1, 60)
        up = rng.random() < 0.5
        price = rng.randint(20, 2500)
        if up:
            text = _pick(
                rng,
                [
                    "A {item} costs ${a}. Its price increases by {p}%. What is the new price in dollars?",
                    "The rent for a small shop is ${a} a month. Next year it goes up by {p}%. What will the monthly rent be, in dollars?",
                ],
            )
        else:
            text = _pick(
                rng,
                [
                    "A {item} that costs ${a} is on sale for {p}% off. What is the sale price in dollars?",
                    "A {item} is priced at ${a}. {n} gets a {p}% discount. How many dollars does {n} pay?",
                ],
            )
        sign = "+" if up else "-"
        answer = price + (1 if up else -1) * Fraction(p, 100) * price
        return Plan(
            kind="percent_change",
            params={"price": price, "p": p, "up": int(up)},
            text=text.format(n=n, a=price, p=p, item=item) + " Give the exact value.",
            answer=answer,
            goal=f"the price ${price} after a {p}% {'increase' if up else 'discount'}",
            givens=[("price", price, "original price"), ("p", p, "percent change")],
            units=[
                Unit(f"the change is {p}% of ${price}", "change = Fraction({p}, 100) * {price}", "change"),
                Unit(
                    f"{'add' if up else 'subtract'} the change",
                    f"new_price = {{price}} {sign} change",
                    "new_price",
                ),
            ],
            check=f"new_price == {{price}} * Fraction(100 {sign} {{p}}, 100)",
            imports=imports,
        )
    # level 3: two successive changes, or undo a discount
    if rng.random() < 0.65:
        price = rng.randint(50, 4000)
        p, q = rng.randint(5, 50), rng.randint(3, 30)
        first_up = rng.random() < 0.4
        if first_up:
            text = "The price of a {item} is ${a}. The price goes up by {p}% in March and then down by {q}% in April. What is the price after April, in dollars?"
            signs = ("+", "-")
        else:
            text = _pick(
                rng,
                [
                    "A {item} is priced at ${a}. It is discounted by {p}%, and then a {q}% sales tax is added to the discounted price. What is the final price in dollars?",
                    "{n} buys a {item} marked ${a}. The shop takes {p}% off, and then {q}% tax is charged on the reduced price. How much does {n} pay, in dollars?",
                ],
            )
            signs = ("-", "+")
        mid = price + (1 if signs[0] == "+" else -1) * Fraction(p, 100) * price
        answer = mid + (1 if signs[1] == "+" else -1) * Fraction(q, 100) * mid
        return Plan(
            kind="successive",
            params={"price": price, "p": p, "q": q, "first_up": int(first_up)},
            text=text.format(n=n, a=price, p=p, q=q, item=item) + " Give the exact value.",
            answer=answer,
            goal=f"${price} changed by {signs[0]}{p}% then {signs[1]}{q}%",
            givens=[
                ("price", price, "starting price"),
                ("p", p, "first percent"),
                ("q", q, "second percent"),
            ],
            units=[
                Unit(f"first change: {p}% of ${price}", "change1 = Fraction({p}, 100) * {price}", "change1"),
                Unit(
                    "price after the first change", f"mid_price = {{price}} {signs[0]} change1", "mid_price"
                ),
                Unit(
                    f"second change: {q}% of the new price",
                    "change2 = Fraction({q}, 100) * mid_price",
                    "change2",
                ),
                Unit(
                    "price after the second change",
                    f"final_price = mid_price {signs[1]} change2",
                    "final_price",
                ),
            ],
            check=f"final_price == {{price}} * Fraction(100 {signs[0]} {{p}}, 100) * Fraction(100 {signs[1]} {{q}}, 100)",
            imports=imports,
        )
    p = rng.randint(5, 60)
    step = 100 // math.gcd(100 - p, 100)
    original = step * rng.randint(max(1, 30 // step), 3000 // step)
    paid = original * (100 - p) // 100
    text = _pick(
        rng,
        [
            "After a {p}% discount, a {item} costs ${b}. What was the original price in dollars?",
            "{n} paid ${b} for a {item} that was {p}% off. What was the price before the discount, in dollars?",
        ],
    )
    return Plan(
        kind="reverse_discount",
        params={"original": original, "p": p},
        text=text.format(n=n, p=p, b=paid, item=item),
        answer=original,
        goal=f"the price before a {p}% discount, given ${paid} after it",
        givens=[("paid", paid, "price after the discount"), ("p", p, "discount percent")],
        units=[
            Unit(
                f"after {p}% off, {100 - p}% of the price is paid",
                "share_paid = 1 - Fraction({p}, 100)",
                "share_paid",
            ),
            Unit("divide what was paid by that share", "original = {paid} / share_paid", "original"),
        ],
        check="original * (100 - {p}) == {paid} * 100",
        imports=imports,
    )


# --------------------------------------------------------------------------------------------------
# Family: linear equations.


def _linear(rng: random.Random, level: int) -> Plan:
    n, _ = _two_names(rng)
    imports = (FRACTION_IMPORT,)
    if level == 1:
        x = rng.randint(-30, 60)
        a = rng.randint(2, 19)
        b = rng.choice([-1, 1]) * rng.randint(1, 99)
        c = a * x + b
        if x > 0 and rng.random() < 0.4:
            verb = f"adds {b}" if b > 0 else f"subtracts {-b}"
            text = f"{n} thinks of a number, multiplies it by {a} and then {verb}. The result is {c}. What was the number?"
        else:
            text = _pick(
                rng,
                [
                    "Solve for x: {a}x {sb} = {c}.",
                    "Find x if {a}x {sb} = {c}.",
                    "What value of x satisfies {a}x {sb} = {c}?",
                ],
            )
            text = text.format(a=a, sb=_sign(b), c=c)
        return Plan(
            kind="one_sided",
            params={"a": a, "b": b, "c": c},
            text=text,
            answer=Fraction(c - b, a),
            goal=f"x with {a}x {_sign(b)} = {c}",
            givens=[("a", a, "coefficient of x"), ("b", b, "constant on the left"), ("c", c, "right side")],
            units=[
                Unit(f"move {b} to the right side and divide by {a}", "x = Fraction({c} - {b}, {a})", "x")
            ],
            check="{a} * x + {b} == {c}",
            imports=imports,
        )
    if level == 2:
        a, c = rng.sample(range(-15, 20), 2)
        a = a or 21
        c = c or 23
        b, d = rng.randint(-99, 99), rng.randint(-99, 99)
        text = _pick(
            rng,
            ["Solve for x: {a}x {sb} = {c}x {sd}.", "For what value of x is {a}x {sb} equal to {c}x {sd}?"],
        )
        return Plan(
            kind="two_sided",
            params={"a": a, "b": b, "c": c, "d": d},
            text=text.format(a=a, sb=_sign(b), c=c, sd=_sign(d))
            + " Give x as an integer or a reduced fraction.",
            answer=Fraction(d - b, a - c),
            goal=f"x with {a}x {_sign(b)} = {c}x {_sign(d)}",
            givens=[
                ("a", a, "x coefficient, left"),
                ("b", b, "constant, left"),
                ("c", c, "x coefficient, right"),
                ("d", d, "constant, right"),
            ],
            units=[
                Unit(f"collect x terms: {a} - {c}", "coef = {a} - {c}", "coef"),
                Unit(f"collect constants: {d} - {b}", "const = {d} - {b}", "const"),
                Unit("x = const / coef", "x = Fraction(const, coef)", "x"),
            ],
            check="{a} * x + {b} == {c} * x + {d}",
            imports=imports,
        )
    kind = _pick(rng, ["brackets", "tickets", "heads_legs"])
    if kind == "brackets":  # a(x + b) + c = d(x - e)
        a, d = rng.sample(range(2, 16), 2)
        b, e = rng.randint(1, 40), rng.randint(1, 40)
        c = rng.choice([-1, 1]) * rng.randint(1, 99)
        return Plan(
            kind="brackets",
            params={"a": a, "b": b, "c": c, "d": d, "e": e},
            text=f"Solve for x: {a}(x + {b}) {_sign(c)} = {d}(x - {e}). Give x as an integer or a reduced fraction.",
            answer=Fraction(-d * e - a * b - c, a - d),
            goal=f"x with {a}(x + {b}) {_sign(c)} = {d}(x - {e})",
            givens=[
                ("a", a, "left factor"),
                ("b", b, "added inside"),
                ("c", c, "left constant"),
                ("d", d, "right factor"),
                ("e", e, "subtracted inside"),
            ],
            units=[
                Unit(
                    f"expand: {a}x + {a}*{b} {_sign(c)} = {d}x - {d}*{e}; collect the x terms",
                    "coef = {a} - {d}",
                    "coef",
                ),
                Unit("constants moved to the right side", "const = -{d} * {e} - {a} * {b} - {c}", "const"),
                Unit("divide", "x = Fraction(const, coef)", "x"),
            ],
            check="{a} * (x + {b}) + {c} == {d} * (x - {e})",
            imports=imports,
        )
    if kind == "tickets":
        child_price = rng.randint(3, 20)
        adult_price = child_price + rng.randint(2, 25)
        adults, children = rng.randint(10, 400), rng.randint(10, 400)
        total = adults + children
        money = adults * adult_price + children * child_price
        text = _pick(
            rng,
            [
                "A theater sold {t} tickets for a total of ${m}. Adult tickets cost ${pa} and child tickets cost ${pc}. How many child tickets were sold?",
                "Adult tickets to a fair cost ${pa} and child tickets cost ${pc}. One day {t} tickets were sold for ${m} in all. How many child tickets were sold?",
            ],
        )
        return Plan(
            kind="tickets",
            params={"total": total, "money": money, "adult_price": adult_price, "child_price": child_price},
            text=text.format(t=total, m=money, pa=adult_price, pc=child_price),
            answer=children,
            goal="the number of child tickets",
            givens=[
                ("tickets", total, "tickets sold"),
                ("money", money, "total income"),
                ("adult", adult_price, "adult price"),
                ("child", child_price, "child price"),
            ],
            units=[
                Unit("if every ticket were an adult ticket", "all_adult = {tickets} * {adult}", "all_adult"),
                Unit(
                    "each child ticket lowers the total by the price difference",
                    "gap = all_adult - {money}",
                    "gap",
                ),
                Unit("number of child tickets", "children = gap // ({adult} - {child})", "children"),
            ],
            check="({tickets} - children) * {adult} + children * {child} == {money}",
        )
    chickens, cows = rng.randint(5, 300), rng.randint(5, 300)
    heads, legs = chickens + cows, 2 * chickens + 4 * cows
    return Plan(
        kind="heads_legs",
        params={"heads": heads, "legs": legs},
        text=f"A farm has only chickens and cows. Together they have {heads} heads and {legs} legs. How many cows are on the farm?",
        answer=cows,
        goal="the number of cows",
        givens=[("heads", heads, "animals"), ("legs", legs, "legs")],
        units=[
            Unit(
                "if all animals were chickens, there would be 2 legs per head",
                "chicken_legs = 2 * {heads}",
                "chicken_legs",
            ),
            Unit("each cow adds 2 extra legs", "cows = ({legs} - chicken_legs) // 2", "cows"),
        ],
        check="2 * ({heads} - cows) + 4 * cows == {legs}",
    )


# --------------------------------------------------------------------------------------------------
# Family: fractions.

_OPS = {"+": ("plus", "+"), "-": ("minus", "-"), "*": ("times", "*"), "/": ("divided by", "/")}


def _frac(rng: random.Random, max_den: int) -> tuple[int, int]:
    den = rng.randint(2, max_den)
    return rng.randint(1, den - 1 if rng.random() < 0.8 else 3 * den), den


def _fraction(rng: random.Random, level: int) -> Plan:
    n, _ = _two_names(rng)
    imports = (FRACTION_IMPORT,)
    tail = _pick(rng, [" Give the answer as a reduced fraction.", " Simplify the answer.", ""])
    if level == 1:
        (a, b), (c, d) = _frac(rng, 12), _frac(rng, 12)
        op = _pick(rng, list(_OPS))
        word, sym = _OPS[op]
        # "a/b / c/d" would read as ((a/b)/c)/d: a divided fraction is written in brackets
        first, second = (f"({a}/{b})", f"({c}/{d})") if op == "/" else (f"{a}/{b}", f"{c}/{d}")
        text = _pick(rng, [f"Compute {first} {sym} {second}.", f"What is {a}/{b} {word} {c}/{d}?"]) + tail
        return Plan(
            kind="two_terms",
            params={"a": a, "b": b, "op": op, "c": c, "d": d},
            text=text,
            answer=_apply(op, Fraction(a, b), Fraction(c, d)),
            goal=f"{a}/{b} {sym} {c}/{d}",
            givens=[
                ("a", a, "first numerator"),
                ("b", b, "first denominator"),
                ("c", c, "second numerator"),
                ("d", d, "second denominator"),
            ],
            units=[
                Unit(
                    f"{a}/{b} {word} {c}/{d}",
                    f"result = Fraction({{a}}, {{b}}) {sym} Fraction({{c}}, {{d}})",
                    "result",
                )
            ],
            imports=imports,
        )
    if level == 2:  # a/b +- c/d * e/f: the product comes first
        (a, b), (c, d), (e, f) = _frac(rng, 20), _frac(rng, 20), _frac(rng, 20)
        op = _pick(rng, ["+", "-"])
        mul = _pick(rng, ["*", "/"])
        middle, last = (f"({c}/{d})", f"({e}/{f})") if mul == "/" else (f"{c}/{d}", f"{e}/{f}")
        text = f"Compute {a}/{b} {op} {middle} {mul} {last}." + tail
        return Plan(
            kind="three_terms",
            params={"a": a, "b": b, "op": op, "c": c, "d": d, "mul": mul, "e": e, "f": f},
            text=text,
            answer=_apply(op, Fraction(a, b), _apply(mul, Fraction(c, d), Fraction(e, f))),
            goal=text.split(".")[0].replace("Compute ", "the value of "),
            givens=[("a", a, ""), ("b", b, ""), ("c", c, ""), ("d", d, ""), ("e", e, ""), ("f", f, "")],
            units=[
                Unit(
                    f"{_OPS[mul][0]} comes before {_OPS[op][0]}: {c}/{d} {mul} {e}/{f}",
                    f"second = Fraction({{c}}, {{d}}) {mul} Fraction({{e}}, {{f}})",
                    "second",
                ),
                Unit(f"then {a}/{b} {op} that", f"result = Fraction({{a}}, {{b}}) {op} second", "result"),
            ],
            imports=imports,
        )
    if rng.random() < 0.5:  # pages read over two days
        p, q = _pick(
            rng,
            [(1, 2), (1, 3), (2, 3), (1, 4), (3, 4), (2, 5), (3, 5), (1, 6), (5, 6), (2, 7), (3, 8), (4, 9)],
        )
        r, s = _pick(rng, [(1, 2), (1, 3), (2, 3), (1, 4), (3, 4), (1, 5), (2, 5), (3, 7), (5, 8)])
        pages = q * s * rng.randint(2, 40)
        text = f"A book has {pages} pages. {n} reads {p}/{q} of the book on Monday and {r}/{s} of the remaining pages on Tuesday. How many pages are still unread?"
        return Plan(
            kind="pages",
            params={"pages": pages, "p": p, "q": q, "r": r, "s": s},
            text=text,
            answer=pages * (1 - Fraction(p, q)) * (1 - Fraction(r, s)),
            goal="the number of unread pages",
            givens=[
                ("pages", pages, "pages in the book"),
                ("p", p, ""),
                ("q", q, "Monday share p/q"),
                ("r", r, ""),
                ("s", s, "Tuesday share r/s"),
            ],
            units=[
                Unit(f"Monday: {p}/{q} of {pages}", "monday = Fraction({p}, {q}) * {pages}", "monday"),
                Unit("pages left after Monday", "left = {pages} - monday", "left"),
                Unit(f"Tuesday: {r}/{s} of what is left", "tuesday = Fraction({r}, {s}) * left", "tuesday"),
                Unit("pages left after Tuesday", "unread = left - tuesday", "unread"),
            ],
            check="unread == {pages} * (1 - Fraction({p}, {q})) * (1 - Fraction({r}, {s}))",
            imports=imports,
        )
    (p, q), (r, s) = _frac(rng, 9), _frac(rng, 9)
    p, r = min(p, q - 1), min(r, s - 1)
    volume = rng.randint(20, 900)
    added = rng.randint(1, 60)
    text = (
        f"A tank holds {volume} liters and is {p}/{q} full. {n} drains {r}/{s} of the water in it and then "
        f"pours in {added} liters. How many liters of water are in the tank now? Give the exact value."
    )
    return Plan(
        kind="tank",
        params={"volume": volume, "p": p, "q": q, "r": r, "s": s, "added": added},
        text=text,
        answer=Fraction(p, q) * volume * (1 - Fraction(r, s)) + added,
        goal="the liters of water in the tank at the end",
        givens=[
            ("volume", volume, "tank size"),
            ("p", p, ""),
            ("q", q, "full share"),
            ("r", r, ""),
            ("s", s, "drained share"),
            ("added", added, "liters added"),
        ],
        units=[
            Unit(f"water at first: {p}/{q} of {volume}", "water = Fraction({p}, {q}) * {volume}", "water"),
            Unit(f"drain {r}/{s} of it", "water = water - Fraction({r}, {s}) * water", "water"),
            Unit(f"add {added} liters", "water = water + {added}", "water"),
        ],
        check="water == Fraction({p}, {q}) * {volume} * (1 - Fraction({r}, {s})) + {added}",
        imports=imports,
    )


def _apply(op: str, x: Fraction, y: Fraction) -> Fraction:
    return {"+": x + y, "-": x - y, "*": x * y, "/": x / y}[op]


# --------------------------------------------------------------------------------------------------
# Family: gcd and lcm.


def _sharing_pair(rng: random.Random, g_max: int, u_max: int) -> tuple[int, int]:
    """Two numbers with a non-trivial common factor (so gcd/lcm are not just 1 / the product)."""
    g = rng.randint(2, g_max)
    u, v = rng.sample(range(2, u_max), 2)
    return g * u, g * v


def _gcd_lcm(rng: random.Random, level: int) -> Plan:
    n, _ = _two_names(rng)
    imports = (MATH_IMPORT,)
    if level == 1:
        a, b = _sharing_pair(rng, 30, 40)
        if rng.random() < 0.5:
            text = _pick(
                rng,
                [
                    "What is the greatest common divisor of {a} and {b}?",
                    "Find the GCD of {a} and {b}.",
                    "What is the largest number that divides both {a} and {b}?",
                ],
            )
            unit, check, kind = (
                Unit(f"gcd of {a} and {b}", "g = math.gcd({a}, {b})", "g"),
                "{a} % g == 0 and {b} % g == 0",
                "gcd",
            )
        else:
            text = _pick(
                rng,
                [
                    "What is the least common multiple of {a} and {b}?",
                    "Find the LCM of {a} and {b}.",
                    "What is the smallest positive number that is a multiple of both {a} and {b}?",
                ],
            )
            unit, check, kind = (
                Unit(f"lcm of {a} and {b}", "l = math.lcm({a}, {b})", "l"),
                "l % {a} == 0 and l % {b} == 0",
                "lcm",
            )
        return Plan(
            kind=kind,
            params={"a": a, "b": b},
            text=text.format(a=a, b=b),
            answer=math.gcd(a, b) if kind == "gcd" else math.lcm(a, b),
            goal=f"the {kind} of {a} and {b}",
            givens=[("a", a, "first number"), ("b", b, "second number")],
            units=[unit],
            check=check,
            imports=imports,
        )
    if level == 2:
        if rng.random() < 0.5:  # three periods meeting again: lcm of three
            g = rng.randint(2, 6)
            a, b, c = (g * x for x in rng.sample(range(2, 25), 3))
            text = _pick(
                rng,
                [
                    "Three buses leave a station every {a}, {b} and {c} minutes. They just left together. In how many minutes will they next leave together?",
                    "Three lights blink every {a}, {b} and {c} seconds. They just blinked at the same time. After how many seconds will they next blink together?",
                ],
            )
            return Plan(
                kind="lcm3",
                params={"a": a, "b": b, "c": c},
                text=text.format(a=a, b=b, c=c),
                answer=math.lcm(a, b, c),
                goal=f"the next time periods {a}, {b}, {c} line up",
                givens=[("a", a, "first period"), ("b", b, "second period"), ("c", c, "third period")],
                units=[
                    Unit(
                        "they meet again after the least common multiple", "t = math.lcm({a}, {b}, {c})", "t"
                    )
                ],
                check="t % {a} == 0 and t % {b} == 0 and t % {c} == 0",
                imports=imports,
            )
        a, b = _sharing_pair(rng, 25, 30)
        text = f"{n} has two ribbons, {a} cm and {b} cm long, and cuts both into pieces of the same length, as long as possible, with nothing left over. How many pieces does {n} get?"
        return Plan(
            kind="ribbons",
            params={"a": a, "b": b},
            text=text,
            answer=(a + b) // math.gcd(a, b),
            goal="the number of equal pieces",
            givens=[("a", a, "first ribbon"), ("b", b, "second ribbon")],
            units=[
                Unit(
                    "the longest piece length dividing both is the gcd", "piece = math.gcd({a}, {b})", "piece"
                ),
                Unit("pieces from each ribbon", "pieces = {a} // piece + {b} // piece", "pieces"),
            ],
            check="piece * pieces == {a} + {b}",
            imports=imports,
        )
    if rng.random() < 0.5:
        a, b = _sharing_pair(rng, 40, 30)
        text = f"A rectangular floor is {a} cm by {b} cm. It is covered with identical square tiles, as large as possible, without cutting any tile. How many tiles are needed?"
        return Plan(
            kind="tiles",
            params={"a": a, "b": b},
            text=text,
            answer=(a // math.gcd(a, b)) * (b // math.gcd(a, b)),
            goal="the number of largest square tiles",
            givens=[("a", a, "length"), ("b", b, "width")],
            units=[
                Unit(
                    "the largest tile side divides both sides: the gcd", "side = math.gcd({a}, {b})", "side"
                ),
                Unit("tiles along each side", "along_a = {a} // side\nalong_b = {b} // side", "along_b"),
                Unit("total tiles", "tiles = along_a * along_b", "tiles"),
            ],
            check="tiles * side * side == {a} * {b}",
            imports=imports,
        )
    g = rng.randint(2, 12)
    a, b, c = (g * x for x in rng.sample(range(2, 30), 3))
    return Plan(
        kind="lcm_minus_gcd",
        params={"a": a, "b": b, "c": c},
        text=f"Let L be the least common multiple of {a}, {b} and {c}, and let G be their greatest common divisor. What is L - G?",
        answer=math.lcm(a, b, c) - math.gcd(a, b, c),
        goal=f"lcm minus gcd of {a}, {b}, {c}",
        givens=[("a", a, ""), ("b", b, ""), ("c", c, "")],
        units=[
            Unit("least common multiple", "L = math.lcm({a}, {b}, {c})", "L"),
            Unit("greatest common divisor", "G = math.gcd({a}, {b}, {c})", "G"),
            Unit("the difference", "diff = L - G", "diff"),
        ],
        check="L % G == 0",
        imports=imports,
    )


# --------------------------------------------------------------------------------------------------
# Family: modular arithmetic.


def _modular(rng: random.Random, level: int) -> Plan:
    obj = _pick(rng, OBJECTS)
    if level == 1:
        a, m = rng.randint(1000, 999999), rng.randint(3, 99)
        text = _pick(
            rng,
            [
                f"What is the remainder when {a} is divided by {m}?",
                f"Compute {a} mod {m}.",
                f"{a} {obj} are packed into boxes of {m}. How many {obj} are left over?",
            ],
        )
        return Plan(
            kind="remainder",
            params={"a": a, "m": m},
            text=text,
            answer=a % m,
            goal=f"{a} mod {m}",
            givens=[("a", a, "number"), ("m", m, "divisor")],
            units=[Unit(f"remainder of {a} divided by {m}", "r = {a} % {m}", "r")],
            check="({a} - r) % {m} == 0 and 0 <= r < {m}",
        )
    if level == 2:
        if rng.random() < 0.7:
            b, e = rng.randint(2, 99), rng.randint(10, 999)
            m = 10 if rng.random() < 0.2 else rng.randint(3, 99)
            if m == 10:
                text = f"What is the last digit of {b}^{e}?"
            else:
                text = _pick(
                    rng, [f"What is the remainder when {b}^{e} is divided by {m}?", f"Find {b}^{e} mod {m}."]
                )
            return Plan(
                kind="power",
                params={"b": b, "e": e, "m": m},
                text=text,
                answer=pow(b, e, m),
                goal=f"{b}^{e} mod {m}",
                givens=[("b", b, "base"), ("e", e, "exponent"), ("m", m, "modulus")],
                units=[
                    Unit("modular power with pow(base, exponent, modulus)", "r = pow({b}, {e}, {m})", "r")
                ],
                check="r == {b} ** {e} % {m}",
            )
        h, k = rng.randint(1, 12), rng.randint(100, 99999)
        answer = (h + k) % 12 or 12
        return Plan(
            kind="clock",
            params={"h": h, "k": k},
            text=f"It is {h} o'clock now. What hour will a 12-hour clock show {k} hours from now?",
            answer=answer,
            goal=f"the hour {k} hours after {h} o'clock",
            givens=[("h", h, "hour now"), ("k", k, "hours later")],
            units=[
                Unit("hours wrap around every 12", "hour = ({h} + {k}) % 12", "hour"),
                Unit("a remainder of 0 means 12 o'clock", "if hour == 0:\n    hour = 12", "hour"),
            ],
            check="(hour - {h} - {k}) % 12 == 0 and 1 <= hour <= 12",
        )
    if rng.random() < 0.5:
        a, b = rng.sample(range(2, 99), 2)
        e, f = rng.randint(10, 999), rng.randint(10, 999)
        m = rng.randint(3, 99)
        return Plan(
            kind="power_sum",
            params={"a": a, "e": e, "b": b, "f": f, "m": m},
            text=_pick(
                rng,
                [
                    f"What is the remainder when {a}^{e} + {b}^{f} is divided by {m}?",
                    f"Find ({a}^{e} + {b}^{f}) mod {m}.",
                ],
            ),
            answer=(pow(a, e, m) + pow(b, f, m)) % m,
            goal=f"({a}^{e} + {b}^{f}) mod {m}",
            givens=[("a", a, ""), ("e", e, ""), ("b", b, ""), ("f", f, ""), ("m", m, "modulus")],
            units=[
                Unit(f"{a}^{e} mod {m}", "r1 = pow({a}, {e}, {m})", "r1"),
                Unit(f"{b}^{f} mod {m}", "r2 = pow({b}, {f}, {m})", "r2"),
                Unit("add the remainders and reduce again", "r = (r1 + r2) % {m}", "r"),
            ],
            check="r == ({a} ** {e} + {b} ** {f}) % {m}",
        )
    m = _pick(rng, [p for p in range(11, 100) if all(p % d for d in range(2, 10) if d < p)])
    a = rng.choice([x for x in range(2, 300) if x % m])
    b = rng.randint(1, m - 1)
    return Plan(
        kind="congruence",
        params={"a": a, "b": b, "m": m},
        text=f"Find the smallest positive integer x such that {a}x leaves a remainder of {b} when divided by {m}.",
        answer=b * pow(a, -1, m) % m,
        goal=f"the smallest positive x with {a}x = {b} mod {m}",
        givens=[("a", a, "multiplier"), ("b", b, "remainder"), ("m", m, "modulus")],
        units=[
            Unit(f"{m} is prime, so {a} has an inverse mod {m}", "inv = pow({a}, -1, {m})", "inv"),
            Unit("multiply the remainder by the inverse", "x = {b} * inv % {m}", "x"),
        ],
        check="{a} * x % {m} == {b}",
    )


# --------------------------------------------------------------------------------------------------
# Family: counting and combinations.


def _counting(rng: random.Random, level: int) -> Plan:
    name, _ = _two_names(rng)
    imports = (MATH_IMPORT,)
    if level == 1:
        kind = _pick(rng, ["choose", "menu", "podium"])
        if kind == "choose":
            n, k = rng.randint(8, 80), rng.randint(2, 5)
            text = _pick(
                rng,
                [
                    f"In how many ways can a team of {k} be chosen from {n} players?",
                    f"A club has {n} members. How many ways are there to choose {k} of them to attend a meeting?",
                    f"How many different groups of {k} students can be picked from a class of {n}?",
                ],
            )
            return Plan(
                kind="choose",
                params={"n": n, "k": k},
                text=text,
                answer=math.comb(n, k),
                goal=f"{n} choose {k}",
                givens=[("n", n, "people"), ("k", k, "chosen")],
                units=[Unit("order does not matter: a combination", "ways = math.comb({n}, {k})", "ways")],
                check="ways == math.factorial({n}) // (math.factorial({k}) * math.factorial({n} - {k}))",
                imports=imports,
            )
        if kind == "menu":
            a, b, c = rng.randint(3, 40), rng.randint(3, 40), rng.randint(3, 40)
            text = _pick(
                rng,
                [
                    f"A cafe offers {a} starters, {b} main dishes and {c} desserts. How many different meals of one starter, one main dish and one dessert are possible?",
                    f"{name} has {a} shirts, {b} pairs of trousers and {c} hats. How many different outfits of one shirt, one pair of trousers and one hat can {name} make?",
                ],
            )
            return Plan(
                kind="menu",
                params={"a": a, "b": b, "c": c},
                text=text,
                answer=a * b * c,
                goal="the number of combinations",
                givens=[("a", a, ""), ("b", b, ""), ("c", c, "")],
                units=[Unit("one choice from each group: multiply", "total = {a} * {b} * {c}", "total")],
            )
        n = rng.randint(5, 99)
        text = _pick(
            rng,
            [
                f"{n} runners take part in a race. In how many ways can the gold, silver and bronze medals be awarded?",
                f"In how many ways can a president, a secretary and a treasurer be chosen from {n} club members?",
            ],
        )
        return Plan(
            kind="podium",
            params={"n": n},
            text=text,
            answer=math.perm(n, 3),
            goal=f"ordered choices of 3 from {n}",
            givens=[("n", n, "people")],
            units=[Unit("order matters: a permutation of 3", "ways = math.perm({n}, 3)", "ways")],
            check="ways == {n} * ({n} - 1) * ({n} - 2)",
            imports=imports,
        )
    if level == 2:
        kind = _pick(rng, ["committee", "games", "captain"])
        if kind == "committee":
            w, m = rng.randint(5, 25), rng.randint(5, 25)
            a, b = rng.randint(1, 4), rng.randint(1, 4)
            return Plan(
                kind="committee",
                params={"w": w, "m": m, "a": a, "b": b},
                text=f"A committee of {a} women and {b} men is chosen from {w} women and {m} men. How many different committees are possible?",
                answer=math.comb(w, a) * math.comb(m, b),
                goal="the number of committees",
                givens=[("w", w, "women"), ("m", m, "men"), ("a", a, "women chosen"), ("b", b, "men chosen")],
                units=[
                    Unit(f"choose {a} of {w} women", "women = math.comb({w}, {a})", "women"),
                    Unit(f"choose {b} of {m} men", "men = math.comb({m}, {b})", "men"),
                    Unit("the choices are independent: multiply", "ways = women * men", "ways"),
                ],
                imports=imports,
            )
        if kind == "games":
            n, times = rng.randint(6, 400), rng.randint(1, 2)
            if times == 1:
                text = _pick(
                    rng,
                    [
                        f"At a party with {n} guests, everyone shakes hands with everyone else exactly once. How many handshakes are there?",
                        f"In a league of {n} teams, every team plays every other team once. How many games are played?",
                    ],
                )
            else:
                text = f"In a league of {n} teams, every team plays every other team twice. How many games are played?"
            return Plan(
                kind="games",
                params={"n": n, "times": times},
                text=text,
                answer=math.comb(n, 2) * times,
                goal="the number of pairings",
                givens=[("n", n, "teams"), ("times", times, "meetings per pair")],
                units=[
                    Unit("every pair meets: n choose 2", "pairs = math.comb({n}, 2)", "pairs"),
                    Unit(f"{times} per pair", "games = pairs * {times}", "games"),
                ],
                check="games == {n} * ({n} - 1) // 2 * {times}",
                imports=imports,
            )
        n, k = rng.randint(6, 60), rng.randint(2, 6)
        return Plan(
            kind="captain",
            params={"n": n, "k": k},
            text=f"A coach picks a team of {k} from {n} players and then names one of the {k} as captain. In how many ways can this be done?",
            answer=math.comb(n, k) * k,
            goal="teams with a captain",
            givens=[("n", n, "players"), ("k", k, "team size")],
            units=[
                Unit(f"choose the team: {n} choose {k}", "teams = math.comb({n}, {k})", "teams"),
                Unit(f"then one of the {k} is captain", "ways = teams * {k}", "ways"),
            ],
            check="ways == {n} * math.comb({n} - 1, {k} - 1)",
            imports=imports,
        )
    if rng.random() < 0.5:
        w, m, k = rng.randint(3, 20), rng.randint(4, 20), rng.randint(3, 6)
        return Plan(
            kind="at_least_one",
            params={"w": w, "m": m, "k": k},
            text=f"A group has {w} women and {m} men. In how many ways can a committee of {k} people be formed that includes at least one woman?",
            answer=math.comb(w + m, k) - math.comb(m, k),
            goal="committees with at least one woman",
            givens=[("w", w, "women"), ("m", m, "men"), ("k", k, "committee size")],
            units=[
                Unit("all committees", "total = math.comb({w} + {m}, {k})", "total"),
                Unit("committees with no woman at all", "no_women = math.comb({m}, {k})", "no_women"),
                Unit("subtract", "ways = total - no_women", "ways"),
            ],
            check="ways == sum(math.comb({w}, i) * math.comb({m}, {k} - i) for i in range(1, {k} + 1))",
            imports=imports,
        )
    n, k = rng.randint(8, 40), rng.randint(3, 6)
    x, y = _two_names(rng)
    return Plan(
        kind="not_together",
        params={"n": n, "k": k},
        text=f"A team of {k} is chosen from {n} people, but {x} and {y} refuse to be on the team together. How many teams are possible?",
        answer=math.comb(n, k) - math.comb(n - 2, k - 2),
        goal=f"teams of {k} from {n} without both of two people",
        givens=[("n", n, "people"), ("k", k, "team size")],
        units=[
            Unit("all teams", "total = math.comb({n}, {k})", "total"),
            Unit(
                "teams with both of them: choose the other members",
                "both = math.comb({n} - 2, {k} - 2)",
                "both",
            ),
            Unit("subtract", "ways = total - both", "ways"),
        ],
        check="ways == math.comb({n} - 2, {k}) + 2 * math.comb({n} - 2, {k} - 1)",
        imports=imports,
    )


BUILDERS: dict[str, Callable[[random.Random, int], Plan]] = {
    "arithmetic": _arithmetic,
    "percent": _percent,
    "linear": _linear,
    "fraction": _fraction,
    "gcd_lcm": _gcd_lcm,
    "modular": _modular,
    "counting": _counting,
}


# --------------------------------------------------------------------------------------------------
# Teacher programs: one plan, rendered in a style chosen per problem.


def _inline(value: int) -> str:
    return f"({value})" if value < 0 else str(value)


def teacher_program(
    plan: Plan,
    rng: random.Random,
    style: str | None = None,
    weights: Iterable[float] = STYLE_WEIGHTS,
    recheck: bool = False,
) -> list[str]:
    """The step codes of a teacher solution; the last step prints the answer as its last line.

    ``style``: one of :data:`STYLES`; None draws it from ``rng`` with ``weights`` (short, standard, verbose).
    ``recheck``: a short or standard solution goes on after its answer is printed, as long reasoning
    traces do: one more step that re-reads the problem and restates what it asks (comments) and
    prints the answer again. Pure redundancy (the answer was already printed), so a solution without
    it is as correct: the verbosity stage-2 RL is meant to cut. (A re-check computing the plan's check
    expression cost the bootstrapped policy 12 points of greedy accuracy: too much for a tiny model to
    copy.) A verbose solution re-checks on its own (drawn from ``rng``).

    * short: everything in one or two steps, numbers written in place;
    * standard: one step per computation, intermediate values printed (mostly);
    * verbose: restate the problem and name the given numbers, one step per computation, then often
      a re-check (``assert`` or a printed comparison) and a final print.
    """
    if style is None:
        style = rng.choices(STYLES, weights=list(weights))[0]
    elif style not in STYLES:
        raise ValueError(f"unknown style {style!r} (choose from: {', '.join(STYLES)})")
    final = plan.units[-1].var
    if style == "verbose":
        env = {name: name for name, _, _ in plan.givens}
        lines = [f"# Find {plan.goal}.", *plan.imports]
        lines += [f"{name} = {value}" + (f"  # {desc}" if desc else "") for name, value, desc in plan.givens]
        lines.append(f"print({', '.join(env)})")
        steps = ["\n".join(lines)]
        steps += [f"# {u.comment}\n{u.code.format(**env)}\nprint({u.var})" for u in plan.units]
        if plan.check and rng.random() < 0.75:
            expr = plan.check.format(**env)
            if rng.random() < 0.5:
                steps.append(f"# Check the result\nassert {expr}\nprint('check passed')")
            else:
                steps.append(f"# Double-check: this should print True\nprint({expr})")
            steps.append(f"# Print the answer again\nprint({final})")
        elif rng.random() < 0.5:
            steps.append(f"# The final answer\nprint({final})")
        return steps

    env = {name: _inline(value) for name, value, _ in plan.givens}
    blocks = [(f"# {u.comment}", u.code.format(**env), u.var) for u in plan.units]
    if style == "short" and len(blocks) > 1:
        half = (len(blocks) + 1) // 2
        groups = [blocks[:half], blocks[half:]]
    elif style == "short":
        groups = [blocks]
    else:
        groups = [[b] for b in blocks]
    steps = []
    for i, group in enumerate(groups):
        last = i == len(groups) - 1
        lines = []
        for j, (comment, code, _) in enumerate(group):
            lines.append(comment)
            if i == 0 and j == 0:
                lines += plan.imports
            lines.append(code)
        if last or style == "short" or rng.random() < 0.75:
            lines.append(f"print({group[-1][2]})")
        steps.append("\n".join(lines))
    if recheck:  # one step (one more executor call), since search and RL pay per step
        lines = [RECHECK_COMMENT, f"# Re-read the problem: {plan.text}", f"# It asks for {plan.goal}."]
        lines += ["# The last value printed is that, so it is the answer: print it again.", f"print({final})"]
        steps.append("\n".join(lines))
    return steps


# --------------------------------------------------------------------------------------------------
# Generation.


def _key(family: str, plan: Plan) -> str:
    return json.dumps([family, plan.kind, sorted(plan.params.items())], separators=(",", ":"))


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def split_of(digest: str) -> str:
    """The only split a problem (by the hash of its family, kind and numbers) may ever belong to."""
    return "test" if int(digest[:8], 16) % 1000 < TEST_SHARE * 1000 else "train"


def _check_choice(values: Iterable, allowed: Iterable, what: str) -> None:
    allowed = list(allowed)
    bad = [v for v in values if v not in allowed]
    if bad:
        raise UserError(f"unknown {what} {bad[0]!r} (choose from: {', '.join(map(str, allowed))})")


def iter_plans(
    n: int,
    split: str,
    seed: int,
    levels,
    families,
    style_weights: Iterable[float] = STYLE_WEIGHTS,
    recheck_rate: float = RECHECK_RATE,
) -> Iterator[tuple[str, int, Plan, list[str], str]]:
    """Yield ``n`` distinct problems of ``split``: families x levels round-robin, so all appear.

    Whether a solution re-checks (:func:`teacher_program`) is drawn from the problem's hash, apart from
    the random stream, so ``recheck_rate`` changes solutions but never which problems are drawn."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} (choose from: {', '.join(SPLITS)})")
    levels, families = list(levels), list(families)
    _check_choice(families, FAMILIES, "family")
    _check_choice(levels, LEVELS, "level")
    if not levels or not families:
        raise UserError("need at least one family and one level")
    rng = random.Random(f"mathforge-toy:{seed}:{split}")
    combos = [(f, lv) for f in families for lv in levels]
    seen: set[str] = set()
    for i in range(n):
        family, level = combos[i % len(combos)]
        for _ in range(2000):
            plan = BUILDERS[family](rng, level)
            digest = _digest(_key(family, plan))
            if split_of(digest) == split and digest not in seen and plan.text not in seen:
                break
        else:
            raise UserError(
                f"could not find {n} distinct {split} problems for {family} level {level}; ask for fewer"
            )
        seen.update((digest, plan.text))
        recheck = random.Random(f"mathforge-toy-recheck:{digest}").random() < recheck_rate
        yield family, level, plan, teacher_program(plan, rng, weights=style_weights, recheck=recheck), digest


def _answer_str(value: int | Fraction) -> str:
    return str(Fraction(value))


_STEP_END = "<<mathforge-toy-step-end>>"


def execute_programs(
    programs: list[list[str]], progress: bool = False, per_step: bool = False, executor=None
) -> list[list[str]]:
    """Run teacher programs through the sandboxed executor; returns every step's stdout.

    Teacher code is deterministic and never raises, so by default a whole program runs as one sandbox
    step that prints a marker after each of its steps (one fork per problem instead of one per step,
    ~3x faster), several problems at a time. ``per_step=True`` runs it step by step instead, exactly
    as search does (the tests check that both give the same outputs). ``executor``: an open
    :class:`mathforge.executor.Executor` to use (default: a new one, closed at the end).
    """
    from tqdm import tqdm

    from mathforge.executor import Executor, ExecutorConfig

    outputs: list[list[str]] = []
    with (
        contextlib.nullcontext(executor) if executor is not None else Executor(ExecutorConfig()) as executor,
        tqdm(
            total=len(programs), disable=not progress, desc="executing teacher solutions", unit="problem"
        ) as bar,
    ):
        chunk = 4 * executor.workers  # well under the executor's live-state cap
        for start in range(0, len(programs), chunk):
            batch = programs[start : start + chunk]
            if per_step:
                results = [executor.run_program(codes) for codes in batch]
            else:
                joined = ["\n".join(f"{code}\nprint({_STEP_END!r})" for code in codes) for codes in batch]
                results = [[r] for r in executor.run_many([(None, code) for code in joined])]
            for codes, program_results in zip(batch, results):
                for result in program_results:
                    if result.state is not None:
                        executor.release(result.state)
                    if not result.ok:  # a generator bug, never data
                        raise RuntimeError(f"teacher code failed ({result.error}):\n" + "\n".join(codes))
                if per_step:
                    outputs.append([r.stdout for r in program_results])
                else:
                    parts = program_results[0].stdout.split(f"{_STEP_END}\n")
                    assert len(parts) == len(codes) + 1 and parts[-1] == "", parts
                    outputs.append(parts[:-1])
            bar.update(len(batch))
    return outputs


def generate_problems(
    n: int,
    split: str = "train",
    seed: int = 0,
    levels: Iterable[int] = LEVELS,
    families: Iterable[str] = FAMILIES,
    progress: bool = False,
    executor=None,
    style_weights: Iterable[float] = STYLE_WEIGHTS,
    recheck_rate: float = RECHECK_RATE,
) -> list[dict]:
    """``n`` distinct problems of ``split`` with executed, checked teacher solutions (module doc).

    ``executor``: an open :class:`mathforge.executor.Executor` to reuse (default: a new one).
    """
    chosen = list(iter_plans(n, split, seed, levels, families, style_weights, recheck_rate))
    outputs = execute_programs([codes for *_, codes, _ in chosen], progress, executor=executor)
    rng = random.Random(f"mathforge-toy-order:{seed}:{split}")
    records = []
    for (family, level, plan, codes, digest), outs in zip(chosen, outputs):
        answer = _answer_str(plan.answer)
        printed = outs[-1].strip().splitlines()[-1] if outs[-1].strip() else ""
        if printed != answer:  # the executed teacher disagrees with the generator: a bug, never data
            raise RuntimeError(f"teacher printed {printed!r}, expected {answer!r} for: {plan.text}")
        steps = [Step(code=code, output=out) for code, out in zip(codes, outs)]
        records.append(
            {
                "id": f"toy-{digest[:16]}",
                "problem": plan.text,
                "answer": answer,
                "family": family,
                "level": level,
                "kind": plan.kind,
                "params": plan.params,
                "solution": render_solution(steps, boxed_answer(answer)),
            }
        )
    rng.shuffle(records)  # mix families and levels; still deterministic
    return records


def corpus(n: int = 3000, seed: int = 0) -> Iterator[str]:
    """Texts shaped like the chat-formatted training data (problem + teacher steps), for training a tokenizer.

    No executor is needed: step outputs are left out (they are numbers, which split into single
    digits anyway); the answer block is included.
    """
    for split in SPLITS:
        for _, _, plan, codes, _ in iter_plans(n // 2, split, seed, LEVELS, FAMILIES):
            solution = render_solution([Step(code=c) for c in codes], boxed_answer(_answer_str(plan.answer)))
            yield f"system\n{SYSTEM_PROMPT}\nuser\n{plan.text}\nassistant\n{solution}"


def check_disjoint(train: list[dict], test: list[dict]) -> None:
    """Raise if a problem (by id, i.e. by its math, or by its text) is in both splits."""
    for field_name in ("id", "problem"):
        shared = {r[field_name] for r in train} & {r[field_name] for r in test}
        if shared:
            raise AssertionError(
                f"{len(shared)} problems in both splits (by {field_name}), e.g. {sorted(shared)[0]!r}"
            )


def write_dataset(
    output_dir: str | os.PathLike,
    n_train: int,
    n_test: int,
    seed: int = 0,
    levels=LEVELS,
    families=FAMILIES,
    progress: bool = True,
    style_weights: Iterable[float] = STYLE_WEIGHTS,
    recheck_rate: float = RECHECK_RATE,
) -> dict:
    """Write ``train.jsonl``, ``test.jsonl`` and ``meta.json`` to ``output_dir``; returns the meta."""
    from mathforge.executor import Executor, ExecutorConfig

    out = Path(output_dir)
    with Executor(ExecutorConfig()) as executor:
        splits = {
            split: generate_problems(
                n, split, seed, levels, families, progress, executor, style_weights, recheck_rate
            )
            for split, n in (("train", n_train), ("test", n_test))
        }
    check_disjoint(splits["train"], splits["test"])
    out.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        write_atomic(
            out / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        )
    meta = {
        "generator": "mathforge.data.toy",
        "seed": seed,
        "levels": list(levels),
        "families": list(families),
        "style_weights": list(style_weights),
        "recheck_rate": recheck_rate,
        "counts": {split: len(records) for split, records in splits.items()},
        "answer_format": "integer or reduced fraction a/b, as Python prints int/Fraction",
    }
    write_atomic(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


# --------------------------------------------------------------------------------------------------
# CLI


@dataclass
class ToyDataConfig:
    """Options of `mathforge data toy`."""

    output_dir: str = field(
        default="data/toy", metadata={"help": "Folder for train.jsonl, test.jsonl and meta.json."}
    )
    n_train: int = field(default=5000, metadata={"help": "Number of training problems."})
    n_test: int = field(
        default=500, metadata={"help": "Number of test problems (disjoint from train by construction)."}
    )
    seed: int = field(default=0, metadata={"help": "Random seed; the same seed gives byte-identical files."})
    levels: list[int] = field(
        default_factory=lambda: list(LEVELS),
        metadata={"help": f"Difficulty levels to include, from {list(LEVELS)}."},
    )
    families: list[str] = field(
        default_factory=lambda: list(FAMILIES),
        metadata={"help": f"Problem families to include, from {list(FAMILIES)}."},
    )
    style_weights: list[float] = field(
        default_factory=lambda: list(STYLE_WEIGHTS),
        metadata={
            "help": f"Relative frequency of the teacher's styles {list(STYLES)} (each problem draws one). "
            "Other weights also draw other problems (one random stream)."
        },
    )
    recheck_rate: float = field(
        default=RECHECK_RATE,
        metadata={
            "help": "Share of short and standard teacher solutions that, once the answer is printed, re-read "
            "the problem and print the answer again (one more step): redundant re-verification, as in long "
            "reasoning traces, for stage-2 RL to cut. Changes solutions only, never which problems are drawn."
        },
    )

    def __post_init__(self):
        if (
            len(self.style_weights) != len(STYLES)
            or min(self.style_weights) < 0
            or not sum(self.style_weights)
        ):
            raise ValueError(
                f"style_weights: {len(STYLES)} weights >= 0 (for {', '.join(STYLES)}), not all 0"
            )
        if not 0 <= self.recheck_rate <= 1:
            raise ValueError(f"recheck_rate must be between 0 and 1, got {self.recheck_rate}")
        _check_choice(self.families, FAMILIES, "family")
        _check_choice(self.levels, LEVELS, "level")
        if self.n_train < 0 or self.n_test < 0:
            raise ValueError("n_train and n_test must be >= 0")


def config_types(recipe: dict | None = None) -> list[type]:
    """The option dataclasses `mathforge data toy` parses (evolve checks step recipes against them)."""
    return [ToyDataConfig]


def main(argv: list[str] | None = None) -> dict:
    from mathforge.config import parse_config

    (config,) = parse_config(config_types(), argv, prog="mathforge data toy")
    start = time.perf_counter()
    meta = write_dataset(
        config.output_dir,
        config.n_train,
        config.n_test,
        config.seed,
        config.levels,
        config.families,
        style_weights=config.style_weights,
        recheck_rate=config.recheck_rate,
    )
    seconds = time.perf_counter() - start
    total = sum(meta["counts"].values())
    print(
        f"wrote {meta['counts']} problems to {config.output_dir} in {seconds:.1f}s ({total / max(seconds, 1e-9):.0f} problems/s)"
    )
    return meta


if __name__ == "__main__":
    from mathforge.cli import run_main

    raise SystemExit(run_main(main, None, "mathforge data toy"))
