"""Stage 2 on the toy task: greedy accuracy and mean completion tokens before and after a short GRPO run.

    mathforge data toy --output_dir runs/toy600 --n_train 3000 --n_test 600 --seed 0   # 600 held-out
    OMP_NUM_THREADS=1 python scripts/rl_tokens.py [--policy runs/demo/round_2/sft] [--data runs/toy600 --n 600]

1. ``mathforge eval`` of the stage-1 policy ``--policy``, greedy, executor in the loop, on the first
   ``--n`` held-out toy problems (the test split, disjoint from training by construction);
2. ``mathforge rl --config recipes/tiny/rl/config_toy.yaml`` from that policy (skipped when its output
   folder already holds a model; extra overrides after ``--``, e.g. ``-- --max_steps 20``);
3. the same evaluation of the RL policy, and the paired accuracy change over the same problems (± s.e.);
4. on toy data, the mean tokens of the same problems written in each teacher style (short, standard,
   verbose; short and standard also with the re-check tail most teacher solutions carry): about as
   short as RL can make the policy by choosing among the styles it was taught.

Mean tokens are the tokens the model generated per solution (the executor's outputs are not counted).
Goal (the issue's toy result): tokens cut by >= 30% with accuracy within 1 point of stage 1, or higher.
Each stage runs as its own process; everything lands in ``--output_dir`` and ``summary.json``.
"""

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from mathforge.eval.report import load_samples, paired

REPO = Path(__file__).resolve().parents[1]


def run(module: str, args: list[str], log: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    with open(log, "w") as out:
        code = subprocess.call(
            [sys.executable, "-m", module, *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    if code:
        tail = log.read_text().splitlines()[-20:]
        sys.exit(f"{module} failed (exit {code}); last lines of {log}:\n" + "\n".join(tail))


def evaluate(model: Path, data: Path, out: Path, n: int, backend: str) -> dict:
    if not (out / "results.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        args = [
            "--model_name_or_path", str(model), "--dataset_name", str(data), "--dataset_split", "test",
            "--max_problems", str(n), "--output_dir", str(out), "--backend", backend, "--temperature", "0",
            "--max_new_tokens", "256", "--progress", "false",
        ]  # fmt: skip
        run("mathforge.eval", args, out.parent / f"{out.name}.log")
    results = json.loads((out / "results.json").read_text())
    return {
        "accuracy": results["accuracy"],
        "mean_tokens": results["mean_tokens"],
        "problems": results["problems"],
    }


def teacher_style_tokens(data: Path, samples: Path, tokenizer_dir: Path) -> dict[str, float]:
    """Mean tokens a solution of each teacher style would take on the evaluated problems: the length the
    stage-1 policy learned its styles from, and so about how short RL can make it by choosing among them.

    The toy folder's meta.json (seed, levels, families) regenerates the same test problems; every problem
    is rendered in each style (the code, the step tags and the answer; executor outputs are not the
    model's tokens) and tokenized with the policy's tokenizer. {} for data that is not the toy task."""
    from transformers import AutoTokenizer

    from mathforge.data import toy
    from mathforge.steps import Step, boxed_answer, render_solution

    meta_file = data / "meta.json"
    if not meta_file.exists():
        return {}
    meta = json.loads(meta_file.read_text())
    if meta.get("generator") != "mathforge.data.toy":
        return {}
    ids = {json.loads(line)["id"] for line in samples.read_text().splitlines() if line.strip()}
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    weights = meta.get("style_weights", toy.STYLE_WEIGHTS)
    plans = toy.iter_plans(
        meta["counts"]["test"], "test", meta["seed"], meta["levels"], meta["families"], weights
    )
    variants = {
        "short": ("short", False),
        "short re-checked": ("short", True),
        "standard": ("standard", False),
        "standard re-checked": ("standard", True),
        "verbose": ("verbose", False),
    }
    counts: dict[str, list[int]] = {name: [] for name in variants}
    for _, _, plan, _, digest in plans:
        if f"toy-{digest[:16]}" not in ids:
            continue
        for name, (style, recheck) in variants.items():
            codes = toy.teacher_program(plan, random.Random(digest), style, recheck=recheck)
            text = render_solution([Step(code=c) for c in codes], boxed_answer(str(plan.answer)))
            counts[name].append(len(tok(text, add_special_tokens=False)["input_ids"]))
    return {style: sum(v) / len(v) for style, v in counts.items() if v}


def rechecked_share(samples: list[dict]) -> float:
    """Share of the evaluated solutions (%) that re-check after printing the answer (the toy's redundant step)."""
    from mathforge.data.toy import RECHECK_COMMENT

    return 100 * sum(RECHECK_COMMENT in s["completion"] for s in samples) / max(len(samples), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policy", default="runs/demo/round_2/sft", help="the stage-1 policy (make demo builds it)"
    )
    parser.add_argument(
        "--data", default="runs/demo/round_0/toy", help="toy data folder (train and test splits)"
    )
    parser.add_argument("--config", default=str(REPO / "recipes/tiny/rl/config_toy.yaml"))
    parser.add_argument("--output_dir", default="runs/tiny/rl_tokens")
    parser.add_argument("--n", type=int, default=200, help="held-out problems (>= 200 for the real figure)")
    parser.add_argument("--backend", default="vllm", choices=["vllm", "transformers"], help="for evaluation")
    args, rl_overrides = parser.parse_known_args()
    rl_overrides = [a for a in rl_overrides if a != "--"]

    policy, data, out = Path(args.policy), Path(args.data), Path(args.output_dir)
    if not (policy / "config.json").exists():
        sys.exit(f"no stage-1 policy in {policy}: run `make demo` or `mathforge sft` first")
    out.mkdir(parents=True, exist_ok=True)
    before = evaluate(policy, data, out / "eval_before", args.n, args.backend)
    print(f"stage 1: accuracy {before['accuracy']:.1f}%, mean tokens {before['mean_tokens']:.1f}", flush=True)

    rl_dir = out / "rl"
    if not (rl_dir / "model.safetensors").exists():
        rl_args = [
            "--config", args.config, "--model_name_or_path", str(policy), "--dataset_name", str(data),
            "--output_dir", str(rl_dir), "--disable_tqdm", "true", *rl_overrides,
        ]  # fmt: skip
        run("mathforge.rl", rl_args, out / "rl.log")
    after = evaluate(rl_dir, data, out / "eval_after", args.n, args.backend)

    floor = teacher_style_tokens(data, out / "eval_before" / "samples.jsonl", policy)
    samples_before, samples_after = load_samples(out / "eval_before"), load_samples(out / "eval_after")
    before["rechecked_percent"] = rechecked_share(samples_before)
    after["rechecked_percent"] = rechecked_share(samples_after)
    pairs = paired(samples_before, samples_after)
    cut = 100 * (1 - after["mean_tokens"] / before["mean_tokens"])
    delta = after["accuracy"] - before["accuracy"]
    ok = cut >= 30 and delta >= -1
    summary = {
        "before": before,
        "after": after,
        "token_cut_percent": cut,
        "accuracy_change_points": delta,
        "goal_met": ok,
        "teacher_style_tokens": floor,
        "paired": pairs,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{'':10}{'accuracy':>10}{'mean tokens':>14}{'re-checking':>14}   ({before['problems']} held-out toy "
        "problems, greedy)"
    )
    for name, r in (("stage 1", before), ("after RL", after)):
        print(f"{name:10}{r['accuracy']:>9.1f}%{r['mean_tokens']:>14.1f}{r['rechecked_percent']:>13.1f}%")
    for p in pairs.values():
        print(
            f"paired over {p['problems']} problems: {p['delta']:+.1f} +- {p['se']:.1f} points "
            f"({p['better']} solved only after RL, {p['worse']} only before)"
        )
    if floor:
        styles = ", ".join(
            f"{style} {n:.1f} ({100 * (n / before['mean_tokens'] - 1):+.0f}%)" for style, n in floor.items()
        )
        print(f"the same problems in each teacher style (tokens, vs stage 1): {styles}")
    print(
        f"tokens {-cut:+.1f}%, accuracy {delta:+.1f} points: goal (>= 30% fewer tokens, accuracy >= -1 point) "
        f"{'met' if ok else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
