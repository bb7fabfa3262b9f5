"""The report of a `mathforge evolve` run, rebuilt from the step outputs on disk (never from memory, so a
resumed run writes the same report as an uninterrupted one).

``report.md``: one row per round (coverage of the search, SFT examples, preference pairs, PPM held-out
pairwise accuracy, greedy and search accuracy, mean tokens of a greedy solution, minutes), then stage 2
(accuracy and mean tokens before and after RL), then the expected improvements and whether each
happened. ``report.json`` holds the same numbers; ``rounds.png`` and ``rl.png`` plot them.
"""

from __future__ import annotations

import json
from pathlib import Path

from mathforge.eval.report import _fmt, _save, write_atomic

# column key, heading
COLUMNS = (
    ("round", "round"),
    ("coverage", "search coverage %"),
    ("sft_examples", "SFT examples"),
    ("pairs", "preference pairs"),
    ("ppm_accuracy", "PPM pairwise acc. %"),
    ("greedy_accuracy", "greedy acc. %"),
    ("search_accuracy", "search acc. %"),
    ("mean_tokens", "mean tokens (greedy)"),
    ("minutes", "minutes"),
)
EQUAL_ACCURACY = 2.0  # points: RL "keeps" accuracy when it moves by less than this


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rows_in(dataset: str | None, split: str = "train", limit: int | None = None) -> int | None:
    """Rows of a local JSONL dataset (file or folder with <split>.jsonl); None for a Hub dataset."""
    if not dataset:
        return None
    path = Path(dataset)
    path = path / f"{split}.jsonl" if path.is_dir() else path
    if not path.is_file() or path.suffix != ".jsonl":
        return None
    with open(path, "rb") as f:
        rows = sum(1 for line in f if line.strip())
    return min(rows, limit) if limit is not None else rows


def _round1(value):
    return round(value, 1) if isinstance(value, float) else value


def collect(run_dir: Path, plan) -> dict:
    """The report's numbers: one dict per round, and the RL comparison (None without stage 2)."""
    timings = _json(run_dir / "timings.json") or {}
    by_label = {step.label: step for step in plan.steps}
    rows = []
    for k in range(len(plan.config.rounds) + 1):
        folder = run_dir / f"round_{k}"
        stats = _json(folder / "extract" / "stats.json") or {}
        ppm = _json(folder / "ppm" / "ppm_metrics.json") or {}
        greedy = _json(folder / "eval_greedy" / "results.json") or {}
        search = _json(folder / "eval_search" / "results.json") or {}
        sft = by_label.get(f"round {k}, step sft")
        if k == 0:
            examples = (
                _rows_in(sft.recipe.get("dataset_name"), sft.recipe.get("dataset_train_split", "train"),
                         sft.recipe.get("max_train_samples"))
                if sft else None
            )  # fmt: skip
        else:
            examples = stats.get("sft_rows")
        acc = ppm.get("eval_pairwise_accuracy")
        seconds = sum(v for label, v in timings.items() if label.startswith(f"round {k},"))
        rows.append(
            {
                "round": k,
                "policy": str(sft.out) if sft else plan.base_model,
                "search_problems": stats.get("problems"),
                "coverage": stats.get("coverage"),
                "sft_examples": examples,
                "pairs": stats.get("pairs"),
                "ppm_accuracy": None if acc is None else 100.0 * acc,
                "greedy_accuracy": greedy.get("accuracy"),
                "search_accuracy": search.get("accuracy"),
                "search_mode": (search.get("config") or {}).get("search"),
                "mean_tokens": greedy.get("mean_tokens"),
                "eval_problems": greedy.get("problems"),
                "minutes": seconds / 60.0 if seconds else None,
            }
        )
    rl = None
    if plan.config.rl_recipe is not None:
        after = _json(run_dir / "rl" / "eval_greedy" / "results.json") or {}
        before = rows[-1]
        seconds = sum(v for label, v in timings.items() if label.startswith("stage 2,"))
        rl = {
            "accuracy_before": before["greedy_accuracy"],
            "accuracy_after": after.get("accuracy"),
            "tokens_before": before["mean_tokens"],
            "tokens_after": after.get("mean_tokens"),
            "minutes": seconds / 60.0 if seconds else None,
        }
    total = sum(timings.values()) / 60.0 if timings else None
    return {"run": str(run_dir), "rounds": rows, "rl": rl, "minutes": total}


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[key]) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def rl_table(rl: dict) -> str:
    def delta(a, b, relative=False):
        if a is None or b is None:
            return "–"
        return f"{100.0 * (b - a) / a:+.1f}%" if relative and a else f"{b - a:+.1f}"

    return "\n".join(
        [
            "| | before RL | after RL | change |",
            "|---|---|---|---|",
            f"| greedy accuracy % | {_fmt(rl['accuracy_before'])} | {_fmt(rl['accuracy_after'])} | "
            f"{delta(rl['accuracy_before'], rl['accuracy_after'])} |",
            f"| mean tokens | {_fmt(rl['tokens_before'])} | {_fmt(rl['tokens_after'])} | "
            f"{delta(rl['tokens_before'], rl['tokens_after'], relative=True)} |",
        ]
    )


def findings(rows: list[dict], rl: dict | None) -> list[str]:
    """What the recipe is expected to do, and whether this run did it: one line each, yes or no."""

    def mark(ok: bool) -> str:
        return "yes" if ok else "**no**"

    out = []
    for row in rows:
        g, s = row["greedy_accuracy"], row["search_accuracy"]
        if g is not None and s is not None:
            out.append(
                f"- round {row['round']}: search ({row['search_mode']}) above greedy: {mark(s > g)} ({_fmt(s)} vs {_fmt(g)})"
            )
    for prev, row in zip(rows, rows[1:]):
        for key, what in (("greedy_accuracy", "greedy accuracy"), ("search_accuracy", "search accuracy"),
                          ("coverage", "search coverage")):  # fmt: skip
            a, b = prev[key], row[key]
            if a is not None and b is not None:
                out.append(
                    f"- round {row['round']} above round {prev['round']} in {what}: {mark(b > a)} "
                    f"({_fmt(b)} vs {_fmt(a)})"
                )
    if rl is not None and None not in (
        rl["tokens_before"],
        rl["tokens_after"],
        rl["accuracy_before"],
        rl["accuracy_after"],
    ):
        cut = rl["tokens_after"] < rl["tokens_before"]
        change = rl["accuracy_after"] - rl["accuracy_before"]
        kept = change > -EQUAL_ACCURACY
        out.append(
            f"- RL cut mean tokens: {mark(cut)} ({_fmt(rl['tokens_before'])} -> {_fmt(rl['tokens_after'])}, "
            f"{100.0 * (rl['tokens_after'] - rl['tokens_before']) / max(rl['tokens_before'], 1e-9):+.1f}%)"
        )
        out.append(
            f"- RL kept accuracy (fell by less than {EQUAL_ACCURACY:g} points): {mark(kept)} "
            f"({_fmt(rl['accuracy_before'])} -> {_fmt(rl['accuracy_after'])}, {change:+.1f} points)"
        )
    return out


def markdown(data: dict, plan) -> str:
    c = plan.config
    rows = data["rounds"]
    eval_n = next((r["eval_problems"] for r in rows if r["eval_problems"]), None)
    out = [
        f"# Self-evolution run `{c.name}`",
        "",
        f"Base model `{plan.base_model}`; {len(c.rounds)} round{'s' * (len(c.rounds) != 1)} of search -> "
        "extraction -> SFT -> PPM -> "
        f"evaluation{' then RL' if c.rl_recipe else ''}. Evaluation: {_fmt(eval_n)} held-out problems, "
        "accuracy = pass@1 in %, tokens = mean generated tokens of a greedy solution. Round 0 is the "
        "bootstrap policy (no search, no PPM).",
        "",
        "## Rounds",
        "",
        table(rows),
    ]
    if data["rl"] is not None:
        out += ["", "## Stage 2: RL for efficiency", "", rl_table(data["rl"])]
    out += ["", "## Did the recipe work?", ""]
    out += findings(rows, data["rl"]) or ["- nothing to compare yet"]
    out += ["", "## Files", ""]
    out += ["- `rounds.png`: coverage and accuracies per round"]
    if data["rl"] is not None:
        out += ["- `rl.png`: accuracy and mean tokens before and after RL"]
    out += [
        "- `round_<k>/<step>/`: each step's outputs, `step_recipe.yaml` (its full recipe), "
        "`step_command.sh` and `step.log`",
        f"- total step time {_fmt(data['minutes'])} minutes (`timings.json`)",
    ]
    return "\n".join(out) + "\n"


def plot_rounds(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    xs = [r["round"] for r in rows]
    for key, label in (("coverage", "search coverage"), ("greedy_accuracy", "greedy accuracy"),
                       ("search_accuracy", "search accuracy"), ("ppm_accuracy", "PPM pairwise acc.")):  # fmt: skip
        points = [(x, r[key]) for x, r in zip(xs, rows) if r[key] is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xticks(xs)
    ax.set_xlabel("round")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    for key, label in (("sft_examples", "SFT examples"), ("pairs", "preference pairs")):
        points = [(x, r[key]) for x, r in zip(xs, rows) if r[key] is not None]
        if points:
            ax2.plot(*zip(*points), marker="s", label=label)
    ax2.set_xticks(xs)
    ax2.set_xlabel("round")
    ax2.set_yscale("symlog", linthresh=10)  # bootstrap sets are far larger than a round's own data
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("rows")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8)
    _save(fig, path)


def plot_rl(rl: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(7, 3.2))
    for axis, (before, after), label in (
        (ax, (rl["accuracy_before"], rl["accuracy_after"]), "greedy accuracy (%)"),
        (ax2, (rl["tokens_before"], rl["tokens_after"]), "mean tokens"),
    ):
        bars = axis.bar(
            ["before RL", "after RL"], [before or 0.0, after or 0.0], color=["tab:gray", "tab:blue"]
        )
        axis.bar_label(bars, fmt="%.1f", fontsize=8)
        axis.set_ylabel(label)
    _save(fig, path)


def write_report(run_dir: Path, plan) -> dict:
    """Write report.md, report.json and the plots into ``run_dir``; returns the numbers (+ the table)."""
    data = collect(run_dir, plan)
    data["rounds"] = [{k: _round1(v) for k, v in row.items()} for row in data["rounds"]]
    if data["rl"] is not None:
        data["rl"] = {k: _round1(v) for k, v in data["rl"].items()}
    write_atomic(run_dir / "report.json", json.dumps(data, indent=2) + "\n")
    write_atomic(run_dir / "report.md", markdown(data, plan))
    plot_rounds(data["rounds"], run_dir / "rounds.png")
    if data["rl"] is not None:
        plot_rl(data["rl"], run_dir / "rl.png")
    text = table(data["rounds"])
    if data["rl"] is not None:
        text += "\n\n" + rl_table(data["rl"])
    text += "\n\n" + "\n".join(findings(data["rounds"], data["rl"]))
    return {**data, "table": text}
