"""The report of a `mathforge evolve` run, rebuilt from the step outputs on disk (never from memory, so a
resumed run writes the same report as an uninterrupted one).

Every comparison is paired per problem on the same held-out problems (each evaluation's
``samples.jsonl``), with `mathforge eval compare`'s computation (:func:`mathforge.eval.report.paired`):
the difference B - A in points, one standard error, and a verdict: **better** (difference > 2 s.e.),
**within noise**, **worse** (< -2 s.e.). Compared: each round with the round before and with round 0
(greedy, and search), search against greedy in each round, and greedy after RL against before.

``report.md``: one row per round (search coverage, SFT examples, preference pairs, PPM held-out
pairwise accuracy, greedy and search accuracy with their s.e., mean tokens of a greedy solution,
minutes), the last-round extra search of never-solved problems (coverage before/after), the paired
comparisons, stage 2 (tokens -x % and accuracy ± s.e. against the goal "-30 % tokens, accuracy not worse
beyond noise"), and the recipe's claims with their verdicts. ``report.json`` holds the same numbers;
``rounds.png`` and ``rl.png`` plot them with ± 1 s.e. error bars.
"""

from __future__ import annotations

import json
from pathlib import Path

from mathforge.config import write_atomic
from mathforge.eval.report import format_cell, load_samples, paired, save_figure

# column key, heading (a key with a "_se" twin is shown as value ± s.e.)
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
RL_TOKEN_GOAL = -30.0  # % change of mean tokens that stage 2 aims for (Fast-Math-R1's order of cut)
PPM_GOAL = 75.0  # % held-out pairwise accuracy each round's PPM should reach
HELD_OUT = "held-out"  # every benchmark of an evaluation pooled into one paired set


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


# --- statistics -------------------------------------------------------------------------------------------


def verdict(delta: float, se: float) -> str:
    """better (delta > 2 s.e.), worse (delta < -2 s.e.) or within noise."""
    if delta > 2 * se:
        return "better"
    if delta < -2 * se:
        return "worse"
    return "within noise"


def binomial_se(percent: float | None, n: int | None) -> float | None:
    """One standard error of a share in % measured on ``n`` independent trials."""
    if percent is None or not n:
        return None
    p = percent / 100.0
    return 100.0 * (p * (1.0 - p) / n) ** 0.5


def _pooled(samples: list[dict]) -> list[dict]:
    return [{**s, "benchmark": HELD_OUT} for s in samples]


def paired_accuracy(before: Path, after: Path) -> dict | None:
    """after - before on the problems both evaluations scored (all their benchmarks pooled), from their
    ``samples.jsonl``: problems, delta and se (points), better/worse (problems), verdict. None when either
    evaluation is missing or they share no problem."""
    a, b = load_samples(before), load_samples(after)
    if not a or not b:
        return None
    result = paired(_pooled(a), _pooled(b)).get(HELD_OUT)
    if result is None:
        return None
    return {**result, "verdict": verdict(result["delta"], result["se"])}


def paired_tokens(before: Path, after: Path, solved_by_both: bool = False) -> dict | None:
    """Mean tokens per problem before and after on the problems both scored, the change in % of before
    and its standard error (per-problem differences, so the problems' own lengths cancel).
    ``solved_by_both``: only the problems whose every sample was correct before and after, so that the
    change is the same solutions written shorter, not right answers traded for short wrong ones."""

    def per_problem(samples):
        tokens: dict[tuple, list[float]] = {}
        wrong: set[tuple] = set()
        for s in samples:
            key = (s.get("benchmark"), str(s.get("id")))
            if s.get("tokens") is not None:
                tokens.setdefault(key, []).append(float(s["tokens"]))
            if not s.get("correct"):
                wrong.add(key)
        return {key: sum(v) / len(v) for key, v in tokens.items() if not (solved_by_both and key in wrong)}

    a, b = per_problem(load_samples(before)), per_problem(load_samples(after))
    keys = [k for k in a if k in b]
    if not keys:
        return None
    n = len(keys)
    mean_a = sum(a[k] for k in keys) / n
    diffs = [b[k] - a[k] for k in keys]
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    return {
        "problems": n,
        "before": mean_a,
        "after": mean_a + mean,
        "change_percent": 100.0 * mean / mean_a if mean_a else None,
        "se_percent": 100.0 * (var / n) ** 0.5 / mean_a if mean_a else None,
    }


# --- the numbers ----------------------------------------------------------------------------------------


def _unsolved_pass(folder: Path, main_trees: Path) -> dict | None:
    """The round's extra search of never-solved problems: what it searched and the coverage it moved."""
    meta = _json(folder / "search_unsolved" / "unsolved.json")
    if meta is None:
        return None
    from mathforge.search.mcts import read_trees

    trees = folder / "search_unsolved" / "trees.jsonl"
    extra = read_trees(trees) if trees.is_file() else []
    main = read_trees(main_trees) if main_trees.is_file() else []
    solved_before = {str(t["id"]) for t in main if t.get("solved")}
    solved_after = solved_before | {str(t["id"]) for t in extra if t.get("solved")}
    n = meta["round_problems"]
    return {
        **meta,
        "searched": len(extra),
        "solved": sum(bool(t.get("solved")) for t in extra),
        "coverage_before": 100.0 * len(solved_before) / n if n else None,
        "coverage_after": 100.0 * len(solved_after) / n if n else None,
    }


def collect(run_dir: Path, plan) -> dict:
    """The report's numbers: one dict per round, the paired comparisons, the RL comparison (None without
    stage 2), the claims and the precision the stages ran in."""
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
        examples = (  # what the SFT trained on: the round's own solutions, or every round's (sft_data)
            _rows_in(sft.recipe.get("dataset_name"), sft.recipe.get("dataset_train_split", "train"),
                     sft.recipe.get("max_train_samples"))
            if sft else None
        )  # fmt: skip
        if examples is None and k:
            examples = stats.get("sft_rows")
        acc = ppm.get("eval_pairwise_accuracy")
        ppm_accuracy = None if acc is None else 100.0 * acc
        seconds = sum(v for label, v in timings.items() if label.startswith(f"round {k},"))
        rows.append(
            {
                "round": k,
                "policy": str(sft.out) if sft else plan.base_model,
                "search_problems": stats.get("problems"),
                "coverage": stats.get("coverage"),
                "unsolved_pass": _unsolved_pass(folder, folder / "search" / "trees.jsonl") if k else None,
                "sft_examples": examples,
                "pairs": stats.get("pairs"),
                "ppm_accuracy": ppm_accuracy,
                "ppm_accuracy_se": binomial_se(ppm_accuracy, ppm.get("eval_pairs")),
                "ppm_eval_pairs": ppm.get("eval_pairs"),
                "greedy_accuracy": greedy.get("accuracy"),
                "greedy_accuracy_se": binomial_se(greedy.get("accuracy"), greedy.get("problems")),
                "search_accuracy": search.get("accuracy"),
                "search_accuracy_se": binomial_se(search.get("accuracy"), search.get("problems")),
                "search_mode": (search.get("config") or {}).get("search"),
                "mean_tokens": greedy.get("mean_tokens"),
                "eval_problems": greedy.get("problems"),
                "minutes": seconds / 60.0 if seconds else None,
            }
        )
    comparisons = compare_rounds(run_dir, rows)
    rl = None
    if plan.config.rl_recipe is not None:
        last = run_dir / f"round_{len(rows) - 1}" / "eval_greedy"
        after_dir = run_dir / "rl" / "eval_greedy"
        after = _json(after_dir / "results.json") or {}
        before = rows[-1]
        seconds = sum(v for label, v in timings.items() if label.startswith("stage 2,"))
        rl = {
            "accuracy_before": before["greedy_accuracy"],
            "accuracy_before_se": before["greedy_accuracy_se"],
            "accuracy_after": after.get("accuracy"),
            "accuracy_after_se": binomial_se(after.get("accuracy"), after.get("problems")),
            "tokens_before": before["mean_tokens"],
            "tokens_after": after.get("mean_tokens"),
            "accuracy": paired_accuracy(last, after_dir),
            "tokens": paired_tokens(last, after_dir),
            "tokens_solved": paired_tokens(last, after_dir, solved_by_both=True),
            "minutes": seconds / 60.0 if seconds else None,
        }
    total = sum(timings.values()) / 60.0 if timings else None
    return {
        "run": str(run_dir),
        "precision": getattr(plan, "precision_record", None),
        "rounds": rows,
        "comparisons": comparisons,
        "rl": rl,
        "claims": claims(rows, comparisons, rl),
        "minutes": total,
    }


def compare_rounds(run_dir: Path, rows: list[dict]) -> list[dict]:
    """Every paired comparison of the rounds' evaluations that exist: search vs greedy in each round, each
    round vs the round before and vs round 0 (greedy, and search where both rounds searched)."""
    out = []

    def add(what: str, a: tuple[int, str], b: tuple[int, str]) -> None:
        folder_a, folder_b = (run_dir / f"round_{k}" / f"eval_{kind}" for k, kind in (a, b))
        result = paired_accuracy(folder_a, folder_b)
        if result is not None:
            out.append(
                {
                    "what": what,
                    "a": f"round {a[0]} {a[1]}",
                    "b": f"round {b[0]} {b[1]}",
                    "accuracy_a": rows[a[0]][f"{a[1]}_accuracy"],
                    "accuracy_b": rows[b[0]][f"{b[1]}_accuracy"],
                    **result,
                }
            )

    for row in rows:
        k = row["round"]
        mode = row["search_mode"] or "search"
        add(f"round {k}: {mode} with the PPM vs greedy", (k, "greedy"), (k, "search"))
    for k in range(1, len(rows)):
        for kind in ("greedy", "search"):
            add(f"round {k} vs round {k - 1}, {kind}", (k - 1, kind), (k, kind))
            if k > 1:
                add(f"round {k} vs round 0, {kind}", (0, kind), (k, kind))
    return out


def rl_goal(rl: dict | None) -> dict | None:
    """Stage 2 against its goal: tokens at least 30% fewer, accuracy not worse beyond noise."""
    if rl is None or rl.get("tokens") is None or rl.get("accuracy") is None:
        return None
    change = rl["tokens"]["change_percent"]
    met = change is not None and change <= RL_TOKEN_GOAL and rl["accuracy"]["verdict"] != "worse"
    return {"tokens_change": change, "accuracy_verdict": rl["accuracy"]["verdict"], "met": met}


def claims(rows: list[dict], comparisons: list[dict], rl: dict | None) -> list[dict]:
    """What the recipe claims, each with whether this run shows it by the report's own statistics."""
    out = []
    last = rows[-1]["round"] if len(rows) > 1 else None
    by_what = {c["what"]: c for c in comparisons}
    if last is not None:
        against = f"round {last} vs round 0, greedy" if last > 1 else "round 1 vs round 0, greedy"
        c = by_what.get(against)
        if c is not None:
            out.append(
                {"claim": f"round {last} above round 0 in greedy accuracy", "holds": c["verdict"] == "better",
                 "evidence": f"{c['delta']:+.1f} ± {c['se']:.1f} points, {c['verdict']}"}
            )  # fmt: skip
        mode = rows[-1]["search_mode"] or "search"
        c = by_what.get(f"round {last}: {mode} with the PPM vs greedy")
        if c is not None:
            out.append(
                {"claim": f"PPM-guided search ({mode}) above greedy in round {last}",
                 "holds": c["verdict"] == "better",
                 "evidence": f"{c['delta']:+.1f} ± {c['se']:.1f} points, {c['verdict']}"}
            )  # fmt: skip
    ppm = [r for r in rows if r["ppm_accuracy"] is not None]
    if ppm:
        out.append(
            {
                "claim": f"PPM held-out pairwise accuracy at least {PPM_GOAL:g}% in every round",
                "holds": all(r["ppm_accuracy"] >= PPM_GOAL for r in ppm),
                "evidence": "; ".join(
                    f"round {r['round']} {r['ppm_accuracy']:.1f}"
                    + (f" ± {r['ppm_accuracy_se']:.1f}" if r["ppm_accuracy_se"] is not None else "")
                    + f"% ({format_cell(r['ppm_eval_pairs'])} pairs)"
                    for r in ppm
                ),
            }
        )
    goal = rl_goal(rl)
    if goal is not None:
        t, a = rl["tokens"], rl["accuracy"]
        out.append(
            {
                "claim": f"RL: at least {-RL_TOKEN_GOAL:g}% fewer tokens, accuracy not worse beyond noise",
                "holds": goal["met"],
                "evidence": f"tokens {t['change_percent']:+.1f} ± {t['se_percent']:.1f}%, accuracy "
                f"{a['delta']:+.1f} ± {a['se']:.1f} points ({a['verdict']})",
            }
        )
    return out


# --- markdown ---------------------------------------------------------------------------------------------


def _cell(row: dict, key: str) -> str:
    se = row.get(f"{key}_se")
    return format_cell(row[key]) if se is None or row[key] is None else f"{row[key]:.1f} ± {se:.1f}"


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, key) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def comparison_table(comparisons: list[dict]) -> str:
    lines = [
        "| comparison (B vs A) | A % | B % | paired Δ ± s.e. (points) | problems B better / worse | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c['what']} | {format_cell(c['accuracy_a'])} | {format_cell(c['accuracy_b'])} | {c['delta']:+.1f} ± "
            f"{c['se']:.1f} | {c['better']} / {c['worse']} | {c['verdict']} |"
        )
    return "\n".join(lines)


def rl_table(rl: dict) -> str:
    acc, tokens = rl.get("accuracy"), rl.get("tokens")
    acc_change = f"{acc['delta']:+.1f} ± {acc['se']:.1f} points ({acc['verdict']})" if acc else "–"
    tok_change = f"{tokens['change_percent']:+.1f} ± {tokens['se_percent']:.1f}%" if tokens else "–"
    before = {"accuracy": rl["accuracy_before"], "accuracy_se": rl["accuracy_before_se"]}
    after = {"accuracy": rl["accuracy_after"], "accuracy_se": rl["accuracy_after_se"]}
    lines = [
        "| | before RL | after RL | change (paired) |",
        "|---|---|---|---|",
        f"| greedy accuracy % | {_cell(before, 'accuracy')} | {_cell(after, 'accuracy')} | {acc_change} |",
        f"| mean tokens | {format_cell(rl['tokens_before'])} | {format_cell(rl['tokens_after'])} | {tok_change} |",
    ]
    solved = rl.get("tokens_solved")
    if solved:
        lines.append(
            f"| mean tokens, the {solved['problems']} problems solved before and after | "
            f"{format_cell(solved['before'])} | {format_cell(solved['after'])} | "
            f"{solved['change_percent']:+.1f} ± {solved['se_percent']:.1f}% |"
        )
    goal = rl_goal(rl)
    if goal is not None:
        lines += [
            "",
            f"Goal: {RL_TOKEN_GOAL:+g}% tokens with accuracy not worse beyond noise: "
            + ("**met**" if goal["met"] else "**not met**")
            + f" (tokens {goal['tokens_change']:+.1f}%, accuracy {goal['accuracy_verdict']}).",
        ]
    return "\n".join(lines)


def unsolved_lines(rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        u = row.get("unsolved_pass")
        if u is None:
            continue
        rounds = "round 1" if row["round"] == 1 else f"rounds 1–{row['round']}"
        out.append(
            f"- round {row['round']}: {u['never_solved']} of its {u['round_problems']} problems never solved by "
            f"the searches of {rounds}; searched again with {u['num_rollouts']} "
            f"rollouts ({u['factor']:g}× the round's): {u['solved']} of {u['searched']} solved; round "
            f"{row['round']} coverage {format_cell(u['coverage_before'])}% → {format_cell(u['coverage_after'])}%"
        )
    return out


def findings(data: dict) -> list[str]:
    """The claims, one line each: holds / does not hold, with the numbers behind the verdict."""
    return [
        f"- {c['claim']}: {'**holds**' if c['holds'] else '**does not hold**'} ({c['evidence']})"
        for c in data["claims"]
    ]


def markdown(data: dict, plan) -> str:
    c = plan.config
    rows = data["rounds"]
    eval_n = next((r["eval_problems"] for r in rows if r["eval_problems"]), None)
    precision = data.get("precision")
    out = [
        f"# Self-evolution run `{c.name}`",
        "",
        f"Base model `{plan.base_model}`; {len(c.rounds)} round{'s' * (len(c.rounds) != 1)} of search -> "
        "extraction -> SFT -> PPM -> "
        f"evaluation{' then RL' if c.rl_recipe else ''}. Evaluation: {format_cell(eval_n)} held-out problems, "
        "accuracy = pass@1 in %, tokens = mean generated tokens of a greedy solution. Round 0 is the "
        "bootstrap policy (no search, no PPM). ± is one standard error; every comparison is paired per "
        "problem on the same held-out problems: **better** means a difference above 2 s.e., **worse** below "
        "-2 s.e., anything between is within noise.",
    ]
    if precision:
        out += ["", f"Precision (`precision: {precision['setting']}`): {precision['chosen']}."]
    out += ["", "## Rounds", "", table(rows)]
    extra = unsolved_lines(rows)
    if extra:
        out += ["", "## Extra search of never-solved problems (rStar-Math's last-round rule)", "", *extra]
    if data["comparisons"]:
        out += ["", "## Paired comparisons", "", comparison_table(data["comparisons"])]
    if data["rl"] is not None:
        out += ["", "## Stage 2: RL for efficiency", "", rl_table(data["rl"])]
    out += ["", "## Did the recipe work?", ""]
    out += findings(data) or ["- nothing to compare yet"]
    out += ["", "## Files", ""]
    out += ["- `rounds.png`: accuracies per round, and the paired differences, with ± 1 s.e. bars"]
    if data["rl"] is not None:
        out += ["- `rl.png`: accuracy and mean tokens before and after RL, ± 1 s.e."]
    out += [
        "- `round_<k>/<step>/`: each step's outputs, `step_recipe.yaml` (its full recipe), "
        "`step_command.sh` and `step.log`",
        f"- total step time {format_cell(data['minutes'])} minutes (`timings.json`)",
    ]
    return "\n".join(out) + "\n"


# --- plots ----------------------------------------------------------------------------------------------


def plot_rounds(rows: list[dict], comparisons: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.6))
    xs = [r["round"] for r in rows]
    for key, label in (("coverage", "search coverage"), ("greedy_accuracy", "greedy accuracy"),
                       ("search_accuracy", "search accuracy"), ("ppm_accuracy", "PPM pairwise acc.")):  # fmt: skip
        points = [(x, r[key], r.get(f"{key}_se") or 0.0) for x, r in zip(xs, rows) if r[key] is not None]
        if points:
            px, py, pe = zip(*points)
            ax.errorbar(px, py, yerr=pe, marker="o", capsize=3, label=label)
    ax.set_xticks(xs)
    ax.set_xlabel("round")
    ax.set_ylabel("%  (± 1 s.e.)")
    ax.set_ylim(0, 105)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    # the paired differences: what the verdicts are made of
    shown = [c for c in comparisons if "vs round 0" in c["what"] or "vs greedy" in c["what"]]
    if shown:
        ys = range(len(shown))
        colors = {"better": "tab:green", "worse": "tab:red", "within noise": "tab:gray"}
        for y, c in zip(ys, shown):
            ax2.errorbar(c["delta"], y, xerr=c["se"], fmt="o", capsize=3, color=colors[c["verdict"]])
        ax2.axvline(0.0, color="black", linewidth=0.8)
        ax2.set_yticks(list(ys), [c["what"] for c in shown], fontsize=7)
        ax2.invert_yaxis()
        ax2.set_xlabel("paired difference, points (± 1 s.e.)")
    else:
        ax2.set_axis_off()
    for key, label in (("sft_examples", "SFT examples"), ("pairs", "preference pairs")):
        points = [(x, r[key]) for x, r in zip(xs, rows) if r[key] is not None]
        if points:
            ax3.plot(*zip(*points), marker="s", label=label)
    ax3.set_xticks(xs)
    ax3.set_xlabel("round")
    ax3.set_yscale("symlog", linthresh=10)  # bootstrap sets are far larger than a round's own data
    ax3.set_ylim(bottom=0)
    ax3.set_ylabel("rows")
    if ax3.get_legend_handles_labels()[0]:
        ax3.legend(fontsize=8)
    save_figure(fig, path)


def plot_rl(rl: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = rl.get("tokens") or {}
    tokens_se = None
    if tokens.get("se_percent") is not None and tokens.get("before"):
        tokens_se = tokens["se_percent"] * tokens["before"] / 100.0  # of the change, drawn on "after"
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(7, 3.2))
    for axis, values, errors, label in (
        (ax, (rl["accuracy_before"], rl["accuracy_after"]), (rl["accuracy_before_se"], rl["accuracy_after_se"]),
         "greedy accuracy (%, ± 1 s.e.)"),
        (ax2, (rl["tokens_before"], rl["tokens_after"]), (0.0, tokens_se), "mean tokens (change ± 1 s.e.)"),
    ):  # fmt: skip
        bars = axis.bar(
            ["before RL", "after RL"],
            [v or 0.0 for v in values],
            yerr=[e or 0.0 for e in errors],
            capsize=4,
            color=["tab:gray", "tab:blue"],
        )
        axis.bar_label(bars, fmt="%.1f", fontsize=8, label_type="center")
        axis.set_ylabel(label)
    save_figure(fig, path)


def write_report(run_dir: Path, plan) -> dict:
    """Write report.md, report.json and the plots into ``run_dir``; returns the numbers (+ the table)."""
    data = collect(run_dir, plan)
    data["rounds"] = [{k: _round1(v) for k, v in row.items()} for row in data["rounds"]]
    if data["rl"] is not None:
        data["rl"] = {k: _round1(v) for k, v in data["rl"].items()}
    write_atomic(run_dir / "report.json", json.dumps(data, indent=2) + "\n")
    write_atomic(run_dir / "report.md", markdown(data, plan))
    plot_rounds(data["rounds"], data["comparisons"], run_dir / "rounds.png")
    if data["rl"] is not None:
        plot_rl(data["rl"], run_dir / "rl.png")
    text = table(data["rounds"])
    if unsolved_lines(data["rounds"]):
        text += "\n\n" + "\n".join(unsolved_lines(data["rounds"]))
    if data["comparisons"]:
        text += "\n\n" + comparison_table(data["comparisons"])
    if data["rl"] is not None:
        text += "\n\n" + rl_table(data["rl"])
    text += "\n\n" + "\n".join(findings(data))
    if data.get("precision"):
        text += f"\n\nPrecision: {data['precision']['chosen']}."
    return {**data, "table": text}
