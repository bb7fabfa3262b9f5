"""Evaluation metrics over graded samples; pure functions, percentages in [0, 100].

A sample is a dict with at least ``id``, ``correct`` (True, False, or None = the grader could not
decide, counted as not correct) and optionally ``tokens``, ``extracted``, ``subject``, ``level``.
Samples of one problem keep their order (sample 0, 1, ...). Definitions:

* ``pass@1``: per problem, the share of its samples that are correct; averaged over problems.
* ``pass@k`` (unbiased, Codex): per problem with n samples of which c are correct,
  1 - C(n-c, k) / C(n, k); averaged. Reported for k <= the smallest n of any problem.
* ``maj@k``: per problem, a vote among its first k samples; the answer given most often wins (ties:
  the one seen first) and counts if it is correct. All correct samples are one vote group (they all
  equal the gold); wrong answers group by their text with spaces removed, so two equal wrong answers
  written differently split their votes. Samples without an answer do not vote.
* ``coverage``: share of problems with at least one correct sample (pass@n).
* ``accuracy_at_budget[B]``: pass@1 where a sample counts only if it is correct *and* used at most
  B completion tokens (what the answer would score had generation been cut at B).
* ``mean_tokens`` / ``median_tokens``: completion tokens per sample.
* ``by_subject`` / ``by_level``: pass@1 and problem count per value of those columns (MATH).
"""

from __future__ import annotations

import statistics
from collections import defaultdict

DEFAULT_BUDGETS = (2048, 4096, 8192, 16384, 32768)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: 1 - C(n-c, k) / C(n, k), as a fraction (the Codex estimator)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # product form of C(n-c, k) / C(n, k); exact enough and no huge integers
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def plurality(keys: list) -> tuple[int, int] | None:
    """The majority rule: (index of the first sample of the most frequent key, its count); ties go to the
    key seen first, None keys do not vote. None when no key votes."""
    counts: dict = {}
    first: dict = {}
    for i, key in enumerate(keys):
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
            first.setdefault(key, i)
    if not counts:
        return None
    winner = max(counts, key=counts.__getitem__)  # the first key with the most votes
    return first[winner], counts[winner]


def majority_correct(samples: list[dict], k: int) -> bool:
    """Whether the majority answer among the first ``k`` samples of one problem is correct."""
    keys = []
    for s in samples[:k]:
        if s["correct"] is True:
            keys.append("\0correct")  # every correct answer equals the gold, so they are one group
        else:  # a wrong answer groups by its text, spaces removed; no answer, no vote
            keys.append("".join(str(s["extracted"]).split()) if s.get("extracted") else None)
    winner = plurality(keys)
    return winner is not None and samples[winner[0]]["correct"] is True


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if n >= 1 and ks[-1] != n:
        ks.append(n)
    return ks


def group_by_problem(samples: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        groups[str(s["id"])].append(s)
    return dict(groups)


def _mean(values) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else 0.0


def _pass1(group: list[dict], budget: int | None = None) -> float:
    ok = [s["correct"] is True and (budget is None or s["tokens"] <= budget) for s in group]
    return sum(ok) / len(ok)


def benchmark_metrics(
    samples: list[dict], ks: list[int] | None = None, budgets: tuple[int, ...] | list[int] = DEFAULT_BUDGETS
) -> dict:
    """All metrics of one benchmark's samples (see the module docstring)."""
    groups = group_by_problem(samples)
    if not groups:
        return {"problems": 0, "samples": 0, "n": 0, "pass@1": 0.0}
    n_min = min(len(g) for g in groups.values())
    n_max = max(len(g) for g in groups.values())
    ks = [k for k in (ks or default_ks(n_min)) if 1 <= k <= n_min]
    correct_counts = {pid: sum(s["correct"] is True for s in g) for pid, g in groups.items()}
    out: dict = {
        "problems": len(groups),
        "samples": len(samples),
        "n": n_min if n_min == n_max else [n_min, n_max],
        "pass@1": _mean(_pass1(g) for g in groups.values()),
        "pass@k": {
            str(k): _mean(pass_at_k(len(g), correct_counts[pid], k) for pid, g in groups.items()) for k in ks
        },
        "maj@k": {str(k): _mean(majority_correct(g, k) for g in groups.values()) for k in ks if k > 1},
        "coverage": _mean(c > 0 for c in correct_counts.values()),
        "unknown": sum(s["correct"] is None for s in samples),
        "no_answer": sum(not s.get("extracted") for s in samples),
    }
    tokens = [s.get("tokens") for s in samples]
    if all(t is not None for t in tokens):
        out["mean_tokens"] = sum(tokens) / len(tokens)
        out["median_tokens"] = float(statistics.median(tokens))
        out["accuracy_at_budget"] = {
            str(b): _mean(_pass1(g, b) for g in groups.values()) for b in sorted(budgets)
        }
    for column in ("subject", "level"):
        if all(g[0].get(column) is not None for g in groups.values()):
            by: dict[str, list[float]] = defaultdict(list)
            for g in groups.values():
                by[str(g[0][column])].append(_pass1(g))
            out[f"by_{column}"] = {
                key: {"problems": len(v), "pass@1": _mean(v)} for key, v in sorted(by.items())
            }
    return out


def average(per_benchmark: dict[str, dict]) -> dict:
    """Unweighted mean over benchmarks of pass@1, coverage and mean tokens (each benchmark counts once)."""
    rows = list(per_benchmark.values())
    out = {
        "pass@1": sum(r["pass@1"] for r in rows) / max(1, len(rows)),
        "coverage": sum(r.get("coverage", 0.0) for r in rows) / max(1, len(rows)),
    }
    if rows and all("mean_tokens" in r for r in rows):
        out["mean_tokens"] = sum(r["mean_tokens"] for r in rows) / len(rows)
    return out


__all__ = [
    "DEFAULT_BUDGETS",
    "average",
    "benchmark_metrics",
    "default_ks",
    "group_by_problem",
    "majority_correct",
    "pass_at_k",
    "plurality",
]
