"""Throughput of mathforge.grader on MATH-500 (each reference solution graded against its answer).

Prints grades/s for: the grader cold (cache off; its worker already started), a grader on its second
pass (every pair a cache hit), and math-verify called directly in this process,
``verify(parse(f"${answer}$"), parse(solution))``, the baseline. First, agreement with a human's verdict
on two sets of hand-written model outputs (hedges, sets of boxes, corrections, final-answer lines,
decimal commas, notations and units; each row names its extraction policy), for the grader and for
math-verify called directly: ``bench/grader_equivalence.jsonl`` (the grader's rules were revised after
seeing it) and ``bench/grader_equivalence_heldout.jsonl`` (written afterwards, never tuned on). Run:

    PYTHONPATH=src .venv/bin/python bench/bench_grader.py
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mathforge.grader import Grader

BENCHMARKS = Path(
    os.environ.get("MATHFORGE_BENCHMARKS", Path(__file__).resolve().parents[1] / "../shared/benchmarks")
)


def _rate(fn, n: int) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return n / (time.perf_counter() - start), result


def main() -> None:
    rows = [json.loads(line) for line in (BENCHMARKS / "math500.jsonl").read_text().splitlines()]
    solutions, answers = [row["solution"] for row in rows], [row["answer"] for row in rows]
    n = len(rows)

    from math_verify import parse, verify

    baseline, base_results = _rate(
        lambda: [verify(parse(f"${a}$"), parse(s)) for s, a in zip(solutions, answers)], n
    )

    with Grader(cache_size=0) as grader:
        start = time.perf_counter()
        grader.grade("\\frac{1}{2}", "0.5")  # start the worker outside the timings
        startup = time.perf_counter() - start
        cold, cold_results = _rate(lambda: grader.grade_many(solutions, answers), n)
    with Grader() as grader:
        grader.grade_many(solutions, answers)  # fill the cache
        warm, _ = _rate(lambda: grader.grade_many(solutions, answers), n)
        info = grader.cache_info()

    print(f"MATH-500, {n} pairs (reference solution vs answer)")
    print(f"  math-verify direct : {baseline:8.1f} grades/s  ({sum(map(bool, base_results))}/{n} correct)")
    print(
        f"  grader, cold       : {cold:8.1f} grades/s  ({sum(r is True for r in cold_results)}/{n} correct)"
        f"  = {cold / baseline:.2f}x math-verify"
    )
    print(
        f"  grader, warm cache : {warm:8.1f} grades/s  = {warm / baseline:.1f}x math-verify, "
        f"{warm / cold:.1f}x cold  (cache {info.hits} hits / {info.misses} misses)"
    )
    print(f"  worker start-up    : {startup:8.2f} s (once per worker, not in the rates above)")

    gsm = [json.loads(line) for line in (BENCHMARKS / "gsm8k_test.jsonl").read_text().splitlines()]
    with Grader(cache_size=0) as grader:
        rate, results = _rate(
            lambda: grader.grade_many([r["answer_text"] for r in gsm], [r["answer"] for r in gsm]), len(gsm)
        )
    print(
        f"GSM8K test, {len(gsm)} pairs, no cache (exact-number fast path, no worker): {rate:8.1f} grades/s "
        f"({sum(r is True for r in results)}/{len(gsm)} correct)"
    )


def agreement(name: str) -> None:
    """Agreement with the human verdicts in bench/<name>; prints the grader's disagreements."""
    from math_verify import parse, verify

    path = Path(__file__).with_name(name)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with Grader() as grader:
        ours = [grader.grade(r["prediction"], r["gold"], r["extraction"]) for r in rows]
    raw = [bool(verify(parse(r["gold"]), parse(r["prediction"]))) for r in rows]
    n = len(rows)
    print(f"Equivalence material, {n} hand-written pairs ({path.name}), agreement with the human verdict:")
    for name, verdicts in (("grader", ours), ("math-verify direct", raw)):
        agree = sum((v is True) == r["expected"] for v, r in zip(verdicts, rows))
        false_pass = sum(v is True and not r["expected"] for v, r in zip(verdicts, rows))
        false_fail = sum(v is not True and r["expected"] for v, r in zip(verdicts, rows))
        print(
            f"  {name:18s} : {agree}/{n} ({100 * agree / n:.1f}%), false correct {false_pass}, false wrong {false_fail}"
        )
    for verdict, row in zip(ours, rows):
        if (verdict is True) != row["expected"]:
            print(f"    grader disagrees ({verdict}, human {row['expected']}): {row['note']}")


if __name__ == "__main__":
    agreement("grader_equivalence.jsonl")  # written first; the grader's rules were revised after seeing it
    agreement("grader_equivalence_heldout.jsonl")  # written after those revisions, graded as is
    main()
