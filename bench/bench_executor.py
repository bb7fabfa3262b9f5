"""Benchmark of mathforge.executor (prints figures; not a test).

1. Throughput on sympy steps: the executor (forks of a zygote that imported sympy) vs a fresh
   ``python -c`` per step (which must import sympy itself), both with the same number of steps in flight.
2. Depth scaling: time per step at depth 16 vs depth 1 of one trajectory (forking the state holder should
   cost the same at any depth; re-running the prefix, as rStar-Math does, grows with it).

Run: ``PYTHONPATH=src python bench/bench_executor.py`` (about 30 s on 2 cores).
"""

import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from mathforge.executor import Executor, ExecutorConfig


def sympy_step(i: int) -> str:
    """A typical model-written step: a factorisation or a small solve, printed."""
    if i % 2:
        return f"import sympy\nprint(sympy.factorint({10**12 + 39 * i}))"
    return f"import sympy\nx = sympy.Symbol('x')\nprint(sympy.solve(x**2 - {i + 2}*x + {i}, x))"


def executor_steps_per_s(ex: Executor, n: int) -> float:
    ex.run_many([(None, sympy_step(i)) for i in range(ex.workers)])  # warm up
    start = time.perf_counter()
    results = ex.run_many([(None, sympy_step(i)) for i in range(n)])
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return n / elapsed


def fresh_python_steps_per_s(n: int, workers: int) -> float:
    def one(i: int) -> None:
        subprocess.run([sys.executable, "-c", sympy_step(i)], check=True, capture_output=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - start)


def step_time_at(ex: Executor, state, repeats: int) -> float:
    """Median wall time of one small sympy step forked from ``state``."""
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        r = ex.run(f"print(sympy.factorint(total + {i}))", parent=state)
        times.append(time.perf_counter() - start)
        assert r.ok, r.error
        ex.release(r.state)  # keep the LRU to the trajectory itself
    return statistics.median(times)


def main() -> None:
    workers = os.cpu_count() or 1
    with Executor(ExecutorConfig(max_workers=workers)) as ex:
        ours = executor_steps_per_s(ex, 400)
        theirs = fresh_python_steps_per_s(4 * workers, workers)
        print(
            f"executor: sympy steps/s = {ours:.1f} vs fresh python -c = {theirs:.1f} "
            f"(ratio {ours / theirs:.1f}×, {workers} in flight)"
        )

        # One trajectory of 16 incremental steps, each adding a sympy value to the state.
        states, state = [], None
        for depth in range(1, 17):
            code = f"import sympy\nv{depth} = sympy.Integer({depth}) ** 3\ntotal = v{depth} + {depth * 1000}"
            r = ex.run(code, parent=state)
            assert r.ok, r.error
            state = r.state
            states.append(state)
        t1, t16 = step_time_at(ex, states[0], 60), step_time_at(ex, states[15], 60)
        print(
            f"executor: time per step at depth 1 = {t1 * 1e3:.2f} ms, at depth 16 = {t16 * 1e3:.2f} ms "
            f"(ratio {t16 / t1:.2f}×)"
        )

        # For scale: what re-running the prefix at every step (rStar-Math) costs at depth 16.
        prefix = "\n".join(states[15].codes())
        replay = statistics.median(_timed(ex, prefix + "\nprint(sympy.factorint(total))") for _ in range(20))
        print(f"executor: re-running the 16-step prefix instead = {replay * 1e3:.2f} ms per step")


def _timed(ex: Executor, code: str) -> float:
    start = time.perf_counter()
    r = ex.run(code)
    elapsed = time.perf_counter() - start
    assert r.ok, r.error
    ex.release(r.state)
    return elapsed


if __name__ == "__main__":
    main()
