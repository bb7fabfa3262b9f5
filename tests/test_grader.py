"""Tests for mathforge.grader: extraction, each normalisation (both directions), time bounds, cache,
threads, and real data (MATH-500, GSM8K test) read in place (the `benchmarks` fixture)."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import threading
from pathlib import Path

import pytest

from mathforge.grader import Grader, extract_answer, extract_answers, final_answer, grade


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2) as shared:
        yield shared


# --- extraction --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are not grouping
        (r"\fbox{7}", "7"),
        (r"\boxed {7}", "7"),
        (r"First \boxed{3}. Wait, that is wrong: \boxed{5}", "5"),  # the last box counts
        (r"\boxed{3} ... and finally \boxed{", None),  # unclosed last box: truncated, no answer
        (r"\boxed{}", None),
        ("The answer is $\\frac12$.", r"\frac12"),
        ("Final Answer: The final answer is $42$. I hope it is correct.", "42"),
        ("So the answer is: **17**.", "17"),
        ("The answer is 5 apples.", "5 apples"),
        ("She makes 9 * 2 = $18.\n#### 18", "18"),
        ("#### 1,234\n", "1,234"),
        ("just some text without an answer", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, extraction, expected",
    [
        # several boxes: distinct values kept, a repeated one once, a corrected one dropped
        (r"\boxed{5} or \boxed{1}", "strict", ("5", "1")),
        (r"\boxed{7}. Check: $7^2=49$, so \boxed{7}", "strict", ("7",)),
        (r"\boxed{10}. Wait, I forgot two squares: \boxed{12}", "strict", ("12",)),
        (r"\boxed{10}. Let me double-check: $10+2$, so \boxed{12}", "strict", ("12",)),
        (r"\boxed{1}, \boxed{2}. Actually also \boxed{3} and \boxed{4}", "strict", ("3", "4")),
        (r"\boxed{\boxed{5}}", "strict", (r"\boxed{5}",)),  # a box inside a box is not another answer
        # the step format's answer block: only the last block, every box in it, no correction rule
        ("<answer>\n\\boxed{5}. Wait, actually \\boxed{1}\n</answer>", "strict", ("5", "1")),
        ("<step>\nprint('\\\\boxed{9}')\n</step>\n<answer>\nThe answer is 4\n</answer>", "strict", ("4",)),
        ("<step>\nx=1\n</step>\n<answer>\n\\boxed{4}", "strict", None),  # unclosed block: truncated
        # answer sentences: the first sentence after "answer is", not the boilerplate after it
        ("The answer is 18. Let me know if you have other questions!", "strict", ("18",)),
        ("The answer is 3.5 hours. Hope this helps.", "strict", ("3.5 hours",)),
        ("The answer is $\\$18.00$. Great!", "strict", (r"\$18.00",)),
        # lenient lines; strict does not read them
        ("She makes 18 dollars.\nFinal Answer: 18", "strict", None),
        ("She makes 18 dollars.\nFinal Answer: 18", "lenient", ("18",)),
        ("Total 18.\n**Final Answer:** $18$\n\nCheck: 9 * 2 = 18, 20 - 2 = 18.", "lenient", ("18",)),
        ("**Answer**: 42", "lenient", ("42",)),
        ("Final Answer: The final answer is $42$. I hope it is correct.", "lenient", ("42",)),
        ("48 + 24 = 72 clips.\nA: 72", "lenient", ("72",)),
        ("A: 72\nthen more text", "lenient", None),  # `A: N` counts only as the last line
        ("48 + 24 = 72 clips.\nA: 72", "strict", None),
        ("The answer is 5.\n#### 6", "lenient", ("6",)),  # the last stated answer, by position
        ("free text with 5 apples\nand 6 pears", "any", None),  # math-verify's part needs a worker
    ],
)
def test_extract_answers_by_policy(text, extraction, expected):
    assert extract_answers(text, extraction) == expected


def test_final_answer_and_unknown_policies(grader):
    assert final_answer(r"so \boxed{3} or \boxed{4}") == "3, 4"
    assert final_answer("She has 5 apples.\nCheck: 5 + 3 = 8.", "any") == "5"  # read up to the check
    assert final_answer("So Janet makes $18 every day at the market.", "any") == "18"
    sentence = "So Janet makes $18 every day at the market."
    assert final_answer(sentence, "lenient") == sentence  # no marker: a one-line text is taken whole
    assert grader.final_answer("18", "any") == "18"  # a bare one-line answer stays whole
    with pytest.raises(ValueError, match="unknown answer extraction 'loose'"):
        grader.grade("1", "1", "loose")
    with pytest.raises(ValueError, match="2 extraction policies but 1 golds"):
        grader.grade_many(["1"], ["1"], ["strict", "any"])


def test_policies_per_pair_and_math_verify_fallback(grader):
    free = "Each box holds 6 eggs, so the 3 boxes hold 18 eggs in total."
    lines = "6 * 3 = 18\nFinal Answer: 18"
    assert grader.grade_many([free, lines, lines], ["18"] * 3, ["any", "lenient", "strict"]) == [
        True,
        True,
        False,
    ]
    assert grader.grade(free, "18", "lenient") is False
    assert grader.grade("She has 5 apples.\nCheck: 5 + 3 = 8 in all.", "5", "any") is True
    assert grader.grade("She has 5 apples.\nCheck: 5 + 3 = 8 in all.", "8", "any") is False


# --- normalisations: (gold, prediction, expected) -------------------------------------------------------

CASES = {
    "fractions": [
        (r"\frac{1}{2}", "0.5", True),
        (r"\dfrac{17}{50}", "0.34", True),
        (r"\frac13", r"\frac{1}{3}", True),
        (r"\frac 59", r"\frac{5}{9}", True),
        (r"\frac13", "0.333333", True),  # math-verify's 6-decimal rounding against a non-literal
        (r"\frac13", "0.33", False),
        (r"\frac{1}{2}", r"\frac{1}{3}", False),
        (r"1\frac{4}{5}", r"\frac95", True),
    ],
    "plain_numbers": [
        ("18", "18", True),
        ("18", "18.00", True),
        ("-10", "-10", True),
        (".0000672", "0.0000672", True),
        ("18", "17", False),
        ("0.333", "0.3333", False),  # literals compare exactly
        ("-3", "3", False),
    ],
    "repeating_decimals": [
        (r"\frac13", r"0.\overline{3}", True),
        (r"0.\overline{3}", r"\frac{1}{3}", True),
        (r"\frac16", r"0.1\overline{6}", True),
        (r"\frac{1}{7}", r"0.\overline{142857}", True),
        (r"\frac13", r"0.\overline{4}", False),
        (r"0.\overline{3}", "0.33", False),
    ],
    "thousands_separators": [
        (r"10,\!080", "10080", True),
        (r"10{,}080", "10080", True),
        ("10080", "10,080", True),
        (r"11,\! 111,\! 111,\! 100", "11111111100", True),
        ("58,500", "58500", True),
        (r"10,\!080", "10800", False),
        ("10080", "10, 080", False),  # a comma and a space: a list
    ],
    "currency_trailing_zeros": [
        (r"\$18.00", "18", True),
        ("18", r"\$18.00", True),
        (r"\$18.90", "18.9", True),
        (r"\$32,\!348", "32348", True),
        ("18", "18 dollars", True),
        (r"\$18.90", "18.09", False),
        (r"\$18.00", "180", False),
    ],
    "percent": [
        (r"50\%", "50", True),
        ("50", r"50\%", True),
        (r"50\%", "0.5", True),
        (r"50\%", r"\frac12", True),
        ("0.5", r"50\%", True),
        ("50", "50 percent", True),
        (r"50\%", "0.05", False),
        (r"50\%", r"5\%", False),
        ("0.5", "50", False),
    ],
    "intervals": [
        ("[-2,7]", r"-2 \le x \le 7", True),
        (r"x \in [-2,7]", r"-2 \le x \le 7", True),
        (r"x \in [-2,7]", "[-2,7]", True),
        (r"(2,\infty)", "x > 2", True),
        ("[-2,7]", r"-2 < x \le 7", False),
        ("(3,4]", "(3,4)", False),
        ("[-2,7]", "[-2,8]", False),
    ],
    "tuples_vectors_matrices": [
        (r"\begin{pmatrix}1\\2\end{pmatrix}", "(1,2)", True),
        ("(1,2)", r"\begin{pmatrix}1\\2\end{pmatrix}", True),
        (
            r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
            r"\left(-\frac13, \frac23, \frac53\right)",
            True,
        ),
        (r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}", r"\begin{pmatrix}-1&0\\0&-1\end{pmatrix}", True),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)", True),
        (r"\begin{pmatrix}1\\2\end{pmatrix}", "(2,1)", False),
        ("(6,31,-1)", "(6,-1,31)", False),  # tuples are ordered
        (r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}", r"\begin{pmatrix}-1&0\\0&1\end{pmatrix}", False),
    ],
    "units": [
        (r"10\text{ cm}", "10", True),  # a unit on one side only is ignored
        ("10", r"10\text{ cm}", True),
        (r"10\text{ cm}", r"10 \text{ centimeters}", True),
        (r"864 \mbox{ inches}^2", r"864\text{ in}^2", True),
        (r"5.4 \text{ cents}", "5.4", True),
        (r"10\text{ m}", r"10\text{ cm}", False),  # units on both sides must agree
        (r"15\mbox{ cm}^2", r"15\text{ cm}", False),
        (r"1\text{ m}", r"100\text{ cm}", False),  # no unit conversion
        (r"10\text{ cm}", r"11\text{ cm}", False),
        ("4t", "4", False),  # a trailing variable is not a unit
        (r"2\mathrm{i}", "2", False),
        ("3000000", "3 million", True),  # a scale word is part of the number, not a unit
    ],
    "degrees": [
        (r"30^\circ", "30", True),
        ("30", r"30^\circ", True),
        (r"30^\circ", r"30^{\circ}", True),
        (r"30^\circ", r"30\text{ degrees}", True),
        (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}", True),
        (r"30^\circ", r"\frac{\pi}{6}", False),  # radians are not accepted for a degree answer
        (r"30^\circ", "31", False),
        (r"30^\circ", r"30\text{ cm}", False),
    ],
    "equations": [
        ("x=3", "3", True),
        ("3", "x=3", True),
        ("x=5", "x = 5", True),
        ("y = 2x + 3", "2x+3", True),
        ("x=3", "y=3", False),
        ("x=3", "x=4", False),
    ],
    "bases": [
        ("52_8", "52", True),  # the subscript may be left out
        ("52_8", "52_8", True),
        ("4210_{5}", "4210_5", True),
        ("52_8", "42", False),  # its decimal value is not the requested form
        ("52", "52_8", False),  # a prediction's subscript must match
        ("52_8", "52_7", False),
        ("2516_8", "2561_8", False),
    ],
    "plus_minus_and_sets": [
        (r"1 \pm \sqrt{19}", r"1+\sqrt{19}, 1-\sqrt{19}", True),
        (r"\{1\pm\sqrt{5},-2\}", r"-2, 1+\sqrt5, 1-\sqrt5", True),
        ("1,-2", "-2,1", True),
        (r"1 \pm \sqrt{19}", r"1+\sqrt{19}", False),
        (r"1 \pm \sqrt{19}", r"1-\sqrt{19}", False),
        ("3, 5, 7", "3, 5", False),
    ],
    "text_answers": [
        (r"\text{(C)}", "C", True),
        (r"\text{(C)}", "(C)", True),
        (r"\text{(C)}", r"\textbf{(C)}", True),
        (r"\text{Evelyn}", "Evelyn", True),
        (r"\text{Evelyn}", r"\text{evelyn}", True),
        (r"\text{(C)}", "D", False),
        (r"\text{Evelyn}", r"\text{Navin}", False),
        (r"\text{even}", r"\text{odd}", False),
    ],
    "symbolic": [
        (r"3\sqrt{13}", r"\sqrt{117}", True),
        (r"\pi", r"\pi", True),
        ("p - q", "-q + p", True),
        (r"x^5 - x^4 + x^3 - x^2 + x - 1", r"(x-1)(x^4+x^2+1)", True),
        (r"6 - 5i", "6-5i", True),
        (r"\pi", "3.14", False),
        (r"2\sqrt{2}", r"\sqrt{2}", False),
        ("2k+2", "2k+1", False),
    ],
    "multiple_boxes": [
        ("1", r"x could be \boxed{5} or \boxed{1}", False),  # a hedge: no credit
        ("1", r"\boxed{1} or maybe \boxed{-1}", False),
        ("7", r"So \boxed{7}. Checking: $7^2 = 49$, as required, so \boxed{7}.", True),
        (r"\frac14", r"$\boxed{\frac14}$, that is $\boxed{0.25}$", True),  # one value in two forms
        ("12", r"\boxed{10}. Wait, I forgot the corners; actually \boxed{12}", True),  # a correction
        ("10", r"\boxed{10}. Wait, I forgot the corners; actually \boxed{12}", False),
        ("3, -2", r"The solutions are $x=\boxed{3}$ and $x=\boxed{-2}$.", True),  # one box per solution
        ("-2, 3", r"$\boxed{3}$, $\boxed{-2}$", True),
        ("3, -2", r"The root is $\boxed{3}$.", False),
        (r"\{1, 2, 3\}", r"$\boxed{1}$, $\boxed{2}$, $\boxed{3}$", True),
        (r"\{1, 2, 3\}", r"$\boxed{1}$, $\boxed{2}$, $\boxed{3}$, $\boxed{4}$", False),
        ("(1,2), (2,1)", r"$\boxed{(1,2)}$ and $\boxed{(2,1)}$", True),  # one box per ordered pair
        ("(1,2), (2,1)", r"$\boxed{(1,2)}$", False),
        (r"1 \pm \sqrt{2}", r"$\boxed{1+\sqrt2}$ and $\boxed{1-\sqrt2}$", True),
        (r"\boxed{1}\boxed{2}", r"\boxed{2}", False),  # a gold of several boxes is a set
        (r"\boxed{1}\boxed{2}", r"\boxed{2, 1}", True),
        (r"\boxed{1}\boxed{2}", r"\boxed{1} and \boxed{2}", True),
        ("(1,2)", r"$\boxed{(1,2)}$ or $\boxed{(2,1)}$", False),  # a tuple is one value
        ("4", "<answer>\n\\boxed{4} or \\boxed{5}\n</answer>", False),
        (
            "1",
            "<answer>\n\\boxed{5}. Wait, actually \\boxed{1}\n</answer>",
            False,
        ),  # no correction in a block
        ("20", r"First $a=\boxed{4}$, then $b=5a=\boxed{20}$.", False),  # not corrected: a hedge by design
    ],
    "decimal_comma": [
        ("500", "0,500", False),  # a leading zero: never thousands
        ("0.5", "0,500", False),  # and not a decimal either: ambiguous
        ("2.5", "2,5", False),
        ("25", "2,5", False),
        ("3, 5", "3,5", True),  # a list written without spaces
        ("1500", "1,500", True),
        ("1.5", "1,500", False),
    ],
    "space_thousands": [
        ("1234567", "1 234 567", True),
        ("12345", r"12\,345", True),
        ("12345", r"12\ 345", True),
        ("1 500", "1500", True),
        ("1234567", "1 234 568", False),
        ("12345", "12 34 5", False),
    ],
    "e_notation": [
        ("300000", "3e5", True),
        ("3e5", "300000", True),
        ("0.00015", "1.5E-4", True),
        ("1.5e+3", r"1.5 \times 10^3", True),
        ("150", "1.5e3", False),
        ("0.00015", "1.5e-5", False),
        ("2e", "2", False),  # 2e is 2 times Euler's number, not e-notation
    ],
    "number_words": [
        ("5", "five", True),
        ("21", "twenty-one", True),
        ("105", "one hundred and five", True),
        ("2500", "two thousand five hundred", True),
        ("-3", "minus three", True),
        ("12", r"\text{twelve}", True),
        ("8", r"\text{eight apples}", True),
        ("2500000", "2.5 million", True),
        ("12", "eleven", False),
        ("5", "fifty", False),
        ("3", "three hundred", False),
        (r"\text{one-to-one}", "1", False),  # words, not a number with a unit
        (r"\text{one of them}", "1", False),
    ],
    "empty_set": [
        (r"\emptyset", r"\varnothing", True),
        (r"\varnothing", r"\emptyset", True),
        (r"\emptyset", r"\{\}", True),
        (r"\emptyset", "∅", True),
        (r"\emptyset", r"\text{the empty set}", True),
        (r"\emptyset", r"\{0\}", False),
        (r"\emptyset", "0", False),
    ],
    "times_of_day": [
        (r"\text{2:30 PM}", "14:30", True),
        ("14:30", "2:30 p.m.", True),
        ("9:15 AM", "09:15", True),
        ("3 PM", "15:00", True),
        ("2:30", "2:30 PM", True),  # the gold leaves the half of the day to the question
        ("7:45 PM", r"7:45\text{ pm}", True),
        ("2:30 PM", "2:30 AM", False),
        ("9:15 AM", "21:15", False),
        ("7:45 PM", "8:45 p.m.", False),
        ("7:45 PM", "7.75", False),
        ("14:30", "2:30", False),  # no a.m./p.m. on either side: not read as times
    ],
    "units_more": [
        (r"10\text{ m}", r"10 \textrm{m}", True),
        (r"10\text{ cm}", r"10 \, \mathrm{cm}", True),
        (r"10\text{ cm}", r"10 {\rm cm}", True),
        (r"10\text{ cm}", r"10\textit{ cm}", True),
        (r"10\text{ cm}", r"10\operatorname{cm}", True),
        ("$24$ square feet", r"24 \text{ ft}^2", True),  # a unit outside the gold's math span
        (r"\(24\) square feet", r"24\text{ sq ft}", True),
        ("$24$ square feet", r"24 \text{ ft}", False),
        ("$60$ mph", r"60 \text{ miles per hour}", True),
        ("$60$ mph", r"60 \text{ km/h}", False),
        (r"5 \text{ meters}", "5 m", True),  # spelled out = abbreviated
        (r"2 \text{ kg}", "2 kilograms", True),
        (r"3 \text{ hours}", "3 hrs", True),
        (r"2 \text{ L}", "2 liters", True),
        (r"5 \text{ meters}", r"5 \text{ cm}", False),  # never different units
        (r"2 \text{ kg}", "2 grams", False),
        (r"3 \text{ hours}", "3 minutes", False),
        (r"50\text{ m}^2", r"50 \text{ square meters}", True),
        (r"50\text{ m}^2", r"50 \text{ cubic meters}", False),
        ("4", "4 t", False),  # a one-letter word that is not a unit is a variable
        ("$x$ or more", "x", False),
    ],
    "column_vectors": [
        (r"\begin{pmatrix} 1 \\ -2 \\ 3 \end{pmatrix}", "(1, -2, 3)", True),
        ("(1, -2, 3)", r"\left(\begin{array}{c} 1 \\ -2 \\ 3 \end{array}\right)", True),
        ("(1, -2, 3)", r"(\begin{matrix} 1 \\ -2 \\ 3 \end{matrix})", True),
        ("(1, -2, 3)", r"\left(\begin{array}{c} 1 \\ 3 \\ -2 \end{array}\right)", False),
        (r"\begin{pmatrix} 2 \\ 0 \end{pmatrix}", "(0, 2)", False),
    ],
    "completions": [
        ("18", r"We get $9 \cdot 2 = 18$, so the answer is $\boxed{18}$.", True),
        ("18", "The answer is 18.", True),
        ("18", "She makes $18.\n#### 18", True),
        ("18", r"First \boxed{17}. Wait, I mis-added: \boxed{18}", True),  # the corrected box counts
        ("18", r"First \boxed{18}. Hmm, recheck: \boxed{17}", False),
        ("18", r"\boxed{18} ... and finally \boxed{", False),  # truncated: no answer
        ("18", "We get 18 here.\nThen something else.", False),  # unmarked multi-line text: no answer
        ("18", "", False),
        (r"Since $x = 2$, $\boxed{\frac{1}{2}}$.", "0.5", True),  # gold: a full reference solution
        ("Adding up\n#### 1,234", "1234", True),
        ("18", "The answer is 18. Let me know if you have any other questions!", True),  # boilerplate
        ("5", "The answer is 5 apples. Hope this helps!", True),
    ],
}


@pytest.mark.parametrize(
    "gold, prediction, expected",
    [
        pytest.param(*case, id=f"{topic}-{i}")
        for topic, cases in CASES.items()
        for i, case in enumerate(cases)
    ],
)
def test_grade_cases(grader, gold, prediction, expected):
    assert grader.grade(prediction, gold) is expected


@pytest.mark.parametrize(
    "gold",
    [
        "",
        "   ",
        r"\boxed{}",
        r"\boxed{\frac{1}{2}",
        "@@@",
        r"\frac{}{}",
        "a long reference\nwith no marked answer",
    ],
)
def test_unparseable_gold_is_unknown_never_true(grader, gold):
    for prediction in [gold, "@@@", "1", r"\frac{1}{2}", ""]:
        assert grader.grade(prediction, gold) is None


def test_module_level_grade_and_grade_many(grader):
    assert grade(r"\boxed{\frac{2}{4}}", "0.5") is True
    assert grade(r"\boxed{3}", "4") is False
    assert grader.grade_many(["1", "2", r"\frac12"], ["1", "3", "0.5"]) == [True, False, True]
    with pytest.raises(ValueError):
        grader.grade_many(["1"], ["1", "2"])


# --- time bounds, threads, cache -------------------------------------------------------------------------

PATHOLOGICAL = [
    r"9^{9^{9^{9}}}",
    r"2^{2^{2^{2^{2^{2}}}}}",
    r"(10^{10})!",
    "\\frac{1}{" * 300 + "2" + "}" * 300,
    "(" * 3000 + "1" + ")" * 3000,
    "5" + " " * 20000 + "x",  # whitespace runs make naive regexes quadratic
    "#### 5" + " " * 20000 + "x",
    "The answer is 5" + " " * 20000 + "x",
]


def _call_in_thread(fn, *args):
    """Run fn in a fresh thread; fail (rather than hang the suite) if it never returns."""
    results = []
    thread = threading.Thread(target=lambda: results.append(fn(*args)), daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "grading did not return"
    return results[0]


@pytest.mark.parametrize(
    "prediction",
    PATHOLOGICAL,
    ids=["tower9", "tower2", "factorial", "fracs", "parens", "spaces", "gsm8k", "answer-is"],
)
def test_pathological_input_returns_unknown_or_wrong(prediction):
    with Grader(timeout=1) as quick:
        assert quick.grade(prediction, "5") is not True  # main thread
        assert _call_in_thread(quick.grade, prediction, "7") is not True  # another thread
        assert quick.grade(r"\frac12", "0.5") is True  # still usable afterwards


def test_long_answers_are_graded_in_a_worker(grader):
    assert grader.grade("9" * 1200, "9" * 1200) is True
    assert grader.grade("9" * 1199 + "8", "9" * 1200) is False
    assert grader.grade("+".join(["x"] * 400), "400x") is True


def test_stuck_worker_is_killed_and_replaced():
    # A stopped process cannot answer, like one stuck in C code where the worker's alarm cannot fire.
    with Grader(timeout=1) as quick:
        assert quick.grade(r"\frac12", "0.5") is True
        (pid,) = quick._worker_pids()
        os.kill(pid, signal.SIGSTOP)
        assert quick.grade(r"\frac14", "0.25") is None
        assert quick._worker_pids() != [pid]
        assert quick.grade(r"\frac14", "0.25") is True


def test_grading_from_other_threads(grader):
    assert _call_in_thread(grader.grade, r"\boxed{0.\overline{3}}", r"\frac13") is True
    assert _call_in_thread(grader.grade, r"\boxed{\frac{2}{3}}", r"\frac13") is False
    results = [None] * 8
    pairs = [(rf"\frac{{{i}}}{{2}}", str(i / 2)) for i in range(8)]

    def work(i):
        results[i] = grader.grade(*pairs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [True] * 8


def _grade_in_forked_child(grader, queue):
    queue.put(grader.grade(r"\frac{3}{4}", "0.75"))


def test_grading_in_a_forked_process():
    # Data loaders fork; a forked copy must start its own workers, not share the parent's sockets.
    context = multiprocessing.get_context("fork")
    with Grader() as shared:
        assert shared.grade(r"\frac12", "0.5") is True
        results = context.Queue()
        child = context.Process(target=_grade_in_forked_child, args=(shared, results))
        child.start()
        assert results.get(timeout=120) is True
        child.join(120)
        assert shared.grade(r"\frac14", "0.25") is True


def test_cache_hits_and_lru_eviction():
    with Grader(cache_size=2) as cached:
        assert cached.grade(r"\frac12", "0.5") is True
        assert cached.grade(r"\frac12", "0.5") is True
        # A different completion with the same final answer is the same cache entry.
        assert cached.grade(r"so it is \boxed{\frac12}", "0.5") is True
        assert cached.cache_info().hits == 2 and cached.cache_info().misses == 1
        cached.grade("1", "2")
        cached.grade("3", "4")  # evicts the oldest entry
        assert cached.cache_info().currsize == 2
        cached.grade(r"\frac12", "0.5")
        assert cached.cache_info().hits == 2
    with Grader(cache_size=0) as uncached:
        uncached.grade("1", "1")
        uncached.grade("1", "1")
        assert uncached.cache_info().hits == 0 and uncached.cache_info().currsize == 0


# --- real data ----------------------------------------------------------------------------------------------


def _load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _derangement(n: int, seed: int = 0) -> list[int]:
    """Sattolo's algorithm: a random single cycle, so no index maps to itself."""
    rng, perm = random.Random(seed), list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _shuffled_wrong_rate(grader, predictions, golds) -> float:
    pairs = [
        (predictions[i], golds[j]) for i, j in enumerate(_derangement(len(golds))) if golds[i] != golds[j]
    ]
    results = grader.grade_many([p for p, _ in pairs], [g for _, g in pairs])
    return sum(result is False for result in results) / len(results)


@pytest.mark.slow
def test_math500_reference_solutions_are_correct(grader, benchmarks):
    rows = _load(benchmarks / "math500.jsonl")
    results = grader.grade_many([row["solution"] for row in rows], [row["answer"] for row in rows])
    failures = [(row["id"], row["answer"], r) for row, r in zip(rows, results) if r is not True]
    assert not failures, f"{len(rows) - len(failures)}/{len(rows)}: {failures[:10]}"


@pytest.mark.slow
def test_math500_shuffled_answers_are_wrong(grader, benchmarks):
    rows = _load(benchmarks / "math500.jsonl")
    rate = _shuffled_wrong_rate(grader, [row["solution"] for row in rows], [row["answer"] for row in rows])
    assert rate >= 0.99, rate


@pytest.mark.slow
def test_gsm8k_reference_solutions_are_correct(grader, benchmarks):
    rows = _load(benchmarks / "gsm8k_test.jsonl")
    results = grader.grade_many([row["answer_text"] for row in rows], [row["answer"] for row in rows])
    failures = [(row["id"], row["answer"], r) for row, r in zip(rows, results) if r is not True]
    assert not failures, f"{len(rows) - len(failures)}/{len(rows)}: {failures[:10]}"


@pytest.mark.slow
def test_gsm8k_shuffled_answers_are_wrong(grader, benchmarks):
    rows = _load(benchmarks / "gsm8k_test.jsonl")
    rate = _shuffled_wrong_rate(grader, [row["answer_text"] for row in rows], [row["answer"] for row in rows])
    assert rate >= 0.99, rate
