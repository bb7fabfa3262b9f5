"""Throughput of mathforge.grader on MATH-500 (each reference solution graded against its answer).

Prints grades/s for: the grader cold (cache off; its worker already started), a grader on its second
pass (every pair a cache hit), and math-verify called directly in this process,
``verify(parse(f"${answer}$"), parse(solution))``, the baseline. Run:

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


if __name__ == "__main__":
    main()
