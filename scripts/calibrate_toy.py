"""Calibrate the round-0 bootstrap of the tiny model on the toy task: build (with the synthetic copy
pretraining), bootstrap SFT on the teacher solutions, then greedy accuracy per level and the coverage
of 4 samples on held-out toy problems, executor in the loop.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/calibrate_toy.py --out /tmp/calib-run
    # reuse a model / data set, change the SFT:
    .venv/bin/python scripts/calibrate_toy.py --out /tmp/c2 --model /tmp/c1/tiny-model --data runs/demo/toy \\
        --sft_args --max_steps 200 --learning_rate 2e-3

Every stage is the real command (`mathforge tiny-model`, `mathforge data toy`, `mathforge sft` with
recipes/tiny/sft/config_toy.yaml, :func:`mathforge.eval.evaluate`); their logs go to files in
--out, only the timings and the accuracy table are printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATHFORGE = [sys.executable, "-m", "mathforge.cli"]


def _run(name: str, args: list[str], out: Path) -> float:
    """Run `mathforge <args>`, output to out/<name>.log; returns the wall time in seconds."""
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.run([*MATHFORGE, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {out / f'{name}.log'}")
    print(f"{name}: {seconds:.0f}s", flush=True)
    return seconds


def _per_level(samples: list[dict]) -> dict:
    """level -> (problems, greedy-or-pass@1 accuracy, coverage) from evaluate's samples."""
    by_problem = defaultdict(list)
    for s in samples:
        by_problem[(s.get("level"), s["id"])].append(bool(s["correct"]))
    table = defaultdict(lambda: [0, 0.0, 0])
    for (level, _), flags in by_problem.items():
        row = table[level]
        row[0] += 1
        row[1] += sum(flags) / len(flags)
        row[2] += any(flags)
    return {lv: (n, acc / n, cov / n) for lv, (n, acc, cov) in sorted(table.items(), key=str)}


def evaluate_policy(policy: Path, data: Path, out: Path, max_problems: int, n: int, temperature: float):
    from mathforge.data.loading import DataArguments
    from mathforge.eval import EvalConfig, evaluate

    config = EvalConfig(
        model_name_or_path=str(policy),
        output_dir=str(out),
        prompt_format="steps",
        backend="vllm",
        n=n,
        temperature=temperature,
        top_p=0.95 if temperature > 0 else 1.0,
        max_new_tokens=256,
        max_steps=16,
        token_budgets=[256, 512, 1024, 2048],
        seed=0,
    )
    data_args = DataArguments(dataset_name=str(data), dataset_split="test", max_problems=max_problems)
    start = time.perf_counter()
    results = evaluate(config, data_args)
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    return results, _per_level(samples), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="Working folder (model, data, policy, evals, logs).")
    parser.add_argument("--model", help="Existing base model folder (default: build one in OUT/tiny-model).")
    parser.add_argument("--model_args", nargs="*", default=[], help="Extra `mathforge tiny-model` options.")
    parser.add_argument("--data", help="Existing toy data folder (default: generate one in OUT/toy).")
    parser.add_argument("--n_train", type=int, default=3000)
    parser.add_argument("--n_test", type=int, default=200)
    parser.add_argument("--policy", help="Existing SFT policy: skip the SFT, only evaluate it.")
    parser.add_argument(
        "--sft_args", nargs=argparse.REMAINDER, default=[], help="Overrides for `mathforge sft`."
    )
    parser.add_argument("--max_problems", type=int, default=200, help="Held-out problems evaluated.")
    parser.add_argument("--samples", type=int, default=4, help="Samples per problem for the coverage.")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    model = Path(args.model).resolve() if args.model else out / "tiny-model"
    if not args.model and not args.policy:
        timings["tiny-model"] = _run(
            "tiny-model", ["tiny-model", "--output", str(model), "--overwrite", "true", *args.model_args], out
        )
    data = Path(args.data).resolve() if args.data else out / "toy"
    if not args.data:
        timings["data"] = _run(
            "data",
            [
                "data",
                "toy",
                "--output_dir",
                str(data),
                "--n_train",
                str(args.n_train),
                "--n_test",
                str(args.n_test),
            ],
            out,
        )
    policy = Path(args.policy).resolve() if args.policy else out / "sft"
    if not args.policy:
        timings["sft"] = _run(
            "sft",
            [
                "sft", "--config", "recipes/tiny/sft/config_toy.yaml", "--model_name_or_path", str(model),
                "--dataset_name", str(data), "--output_dir", str(policy), "--disable_tqdm", "true",
                "--save_strategy", "no", *args.sft_args,
            ],
            out,
        )  # fmt: skip

    for name, n, temperature in (("greedy", 1, 0.0), (f"sample{args.samples}", args.samples, 0.7)):
        log = out / f"eval_{name}.log"
        with open(log, "w") as f:  # vLLM and the executor write progress: keep it out of the terminal
            old_out, old_err = sys.stdout, sys.stderr
            sys.stdout = sys.stderr = f
            try:
                results, levels, seconds = evaluate_policy(
                    policy, data, out / f"eval_{name}", args.max_problems, n, temperature
                )
            finally:
                sys.stdout, sys.stderr = old_out, old_err
        timings[f"eval {name}"] = seconds
        print(f"{name} ({n} sample(s), T={temperature}): {seconds:.0f}s")
        for level, (count, acc, cov) in levels.items():
            print(f"  level {level}: {count} problems, accuracy {acc:.3f}, coverage@{n} {cov:.3f}")
        # evaluate reports percentages
        print(
            f"  all: accuracy {results['accuracy'] / 100:.3f}, coverage@{n} {results['coverage'] / 100:.3f}",
            flush=True,
        )
    print("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))


if __name__ == "__main__":
    main()
