"""Reports of an evaluation run: the markdown table, the PNG plots, and the A/B comparison.

Every number in ``results.md`` is the matching ``results.json`` value rounded to one decimal, so the
table can be checked against the JSON (the tests do). Files are written atomically (temp + rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mathforge.config import write_atomic
from mathforge.errors import UserError


def format_cell(value) -> str:
    """A table cell: "–" for None, one decimal for a float, else the value as it prints."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _top_k(row: dict) -> str | None:
    """The largest k with a maj@k / pass@k value (the run's n), or None for one sample per problem."""
    ks = [k for k in row.get("pass@k", {}) if k != "1"]
    return max(ks, key=int) if ks else None


def main_table(results: dict) -> list[str]:
    rows = results["benchmarks"]
    k = next((_top_k(r) for r in rows.values() if _top_k(r)), None)
    head = ["benchmark", "problems", "n", "pass@1"]
    head += [f"maj@{k}", f"pass@{k}"] if k else []
    head += ["coverage", "mean tokens", "median tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [r.get("title", name), r["problems"], r["n"], r["pass@1"]]
        cells += [r.get("maj@k", {}).get(k), r.get("pass@k", {}).get(k)] if k else []
        cells += [r.get("coverage"), r.get("mean_tokens"), r.get("median_tokens")]
        lines.append("| " + " | ".join(format_cell(c) for c in cells) + " |")
    if len(rows) > 1:
        avg = results["average"]
        cells = ["average", "", "", avg["pass@1"]] + (["", ""] if k else [])
        cells += [avg.get("coverage"), avg.get("mean_tokens"), ""]
        lines.append("| " + " | ".join(format_cell(c) for c in cells) + " |")
    return lines


def markdown(results: dict) -> str:
    cfg = results.get("config", {})
    out = [f"# Evaluation of {results.get('model') or 'predictions'}", ""]
    if results.get("predictions"):
        out += [f"completions scored from `{results['predictions']}`", ""]
    elif cfg:
        out += [
            f"prompt format `{cfg.get('prompt_format')}`, search `{cfg.get('search')}`, backend "
            f"`{cfg.get('backend')}`, n={cfg.get('n')}, temperature {cfg.get('temperature')}, "
            f"top-p {cfg.get('top_p')}, max new tokens {cfg.get('max_new_tokens')}, seed {cfg.get('seed')}",
            "",
        ]
    out += main_table(results)
    rows = results["benchmarks"]
    with_budget = {n: r for n, r in rows.items() if r.get("accuracy_at_budget")}
    if with_budget:
        budgets = list(next(iter(with_budget.values()))["accuracy_at_budget"])
        out += ["", "## Accuracy at token budgets (pass@1, a sample counts if correct within B tokens)", ""]
        out += [
            "| benchmark | " + " | ".join(f"≤{b}" for b in budgets) + " |",
            "|" + "---|" * (len(budgets) + 1),
        ]
        for name, r in with_budget.items():
            values = [r["accuracy_at_budget"].get(b) for b in budgets]
            out.append(f"| {r.get('title', name)} | " + " | ".join(format_cell(v) for v in values) + " |")
    for name, r in rows.items():
        for column in ("subject", "level"):
            if f"by_{column}" in r:
                out += ["", f"## {r.get('title', name)} by {column}", "", f"| {column} | problems | pass@1 |"]
                out += ["|---|---|---|"]
                out += [
                    f"| {key} | {v['problems']} | {format_cell(v['pass@1'])} |"
                    for key, v in r[f"by_{column}"].items()
                ]
    return "\n".join(out) + "\n"


def plot_accuracy(results: dict, path: str | os.PathLike) -> None:
    """Bar chart: pass@1 (and maj@n when there are several samples) per benchmark."""
    import matplotlib

    matplotlib.use("Agg")  # no display; also keeps plotting thread-safe enough for a CLI
    import matplotlib.pyplot as plt

    rows = results["benchmarks"]
    names = [r.get("title", n) for n, r in rows.items()]
    k = next((_top_k(r) for r in rows.values() if _top_k(r)), None)
    series = [("pass@1", [r["pass@1"] for r in rows.values()])]
    if k:
        series.append((f"maj@{k}", [r.get("maj@k", {}).get(k, 0.0) for r in rows.values()]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 3.5))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(str(results.get("model") or "predictions")[-60:], fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, path)


def plot_token_budget(results: dict, path: str | os.PathLike) -> None:
    """Accuracy vs token budget, one line per benchmark (log2 x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, r in results["benchmarks"].items():
        budget = r.get("accuracy_at_budget")
        if budget:
            xs = [int(b) for b in budget]
            ax.plot(xs, list(budget.values()), marker="o", label=r.get("title", name))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("token budget per sample")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, path)


def save_figure(fig, path) -> None:
    """Write a matplotlib figure to ``path`` as PNG (laid out tight, 120 dpi), atomically, and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def write_reports(results: dict, out_dir: str | os.PathLike) -> None:
    """results.json, results.md, accuracy.png and token_budget.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_atomic(out / "results.md", markdown(results))
    plot_accuracy(results, out / "accuracy.png")
    if any(r.get("accuracy_at_budget") for r in results["benchmarks"].values()):
        plot_token_budget(results, out / "token_budget.png")


def load_results(path: str | os.PathLike) -> dict:
    """A run's results.json, from the file or its folder."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"no results.json at {path} (pass an evaluation output folder)")
    try:
        results = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(results, dict) or "benchmarks" not in results:
        raise UserError(f"{file} is not a mathforge eval results.json (no 'benchmarks')")
    return results


def load_samples(path: str | os.PathLike) -> list[dict]:
    """A run's samples.jsonl (one line per sample: benchmark, id, correct, ...); [] when absent."""
    file = Path(path) / "samples.jsonl"
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def paired(samples_a: list[dict], samples_b: list[dict]) -> dict[str, dict]:
    """Per benchmark, B - A on the problems both runs scored: the mean per-problem accuracy difference
    (points) and its standard error, and how many problems B solved more / less often than A.

    Both runs saw the same problems, so the difference's noise is that of the problems whose result
    changed, far smaller than two independent accuracies' (with one greedy sample per problem,
    delta / se is McNemar's z: |z| > 2 is a real difference at about 95%)."""

    def per_problem(samples):
        acc: dict[tuple, list] = {}
        for s in samples:
            if s.get("correct") is not None:
                acc.setdefault((s.get("benchmark"), str(s.get("id"))), []).append(float(s["correct"]))
        return {key: sum(v) / len(v) for key, v in acc.items()}

    pa, pb = per_problem(samples_a), per_problem(samples_b)
    out: dict[str, dict] = {}
    for bench in dict.fromkeys(key[0] for key in pa if key in pb):
        diffs = [pb[k] - pa[k] for k in pa if k in pb and k[0] == bench]
        n = len(diffs)
        mean = sum(diffs) / n
        var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
        out[bench] = {
            "problems": n,
            "delta": 100 * mean,
            "se": 100 * (var / n) ** 0.5,
            "better": sum(d > 0 for d in diffs),
            "worse": sum(d < 0 for d in diffs),
        }
    return out


def compare(a: dict, b: dict, name_a: str = "A", name_b: str = "B", pairs: dict | None = None) -> str:
    """Markdown table of B - A per benchmark: pass@1, maj@n, coverage (points) and mean tokens (%);
    with ``pairs`` (from :func:`paired`), the paired difference, its standard error and the problems B
    solved more / less often."""
    names = list(a["benchmarks"]) + [n for n in b["benchmarks"] if n not in a["benchmarks"]]

    def delta(x, y, relative=False):
        if x is None or y is None:
            return "–"
        if relative:
            return f"{100.0 * (y - x) / x:+.1f}%" if x else "–"
        return f"{y - x:+.1f}"

    head = ["benchmark", f"pass@1 {name_a}", f"pass@1 {name_b}", "Δ", "maj Δ", "coverage Δ"]
    head += [f"tokens {name_a}", f"tokens {name_b}", "tokens Δ"]
    if pairs is not None:
        head += ["paired Δ ± s.e.", f"{name_b} better / worse"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        ra, rb = a["benchmarks"].get(name, {}), b["benchmarks"].get(name, {})
        ka, kb = _top_k(ra), _top_k(rb)
        maj = delta(ra.get("maj@k", {}).get(ka), rb.get("maj@k", {}).get(kb)) if ka and ka == kb else "–"
        ta, tb = ra.get("mean_tokens"), rb.get("mean_tokens")
        cells = [
            ra.get("title") or rb.get("title") or name,
            format_cell(ra.get("pass@1")),
            format_cell(rb.get("pass@1")),
            delta(ra.get("pass@1"), rb.get("pass@1")),
            maj,
            delta(ra.get("coverage"), rb.get("coverage")),
            format_cell(ta),
            format_cell(tb),
            delta(ta, tb, relative=True),
        ]
        if pairs is not None:
            p = pairs.get(name)
            cells += (
                [f"{p['delta']:+.1f} ± {p['se']:.1f}", f"{p['better']} / {p['worse']}"] if p else ["–", "–"]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = [
    "compare",
    "format_cell",
    "load_samples",
    "paired",
    "load_results",
    "markdown",
    "plot_accuracy",
    "plot_token_budget",
    "save_figure",
    "write_reports",
]
