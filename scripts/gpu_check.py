"""`make gpu-check`: every stage on one GPU, with models built here (the GPU machine reaches no hub).

About 8 minutes on one H100/H200-class GPU. Steps, each its own process with a time limit, in order:

1. build: the ~25M-parameter ``small`` tiny model (random weights), a PPM from it (random 1-label head),
   toy data (train/test) and preference pairs from the toy teacher solutions (correct vs a wrong answer);
2. vllm: generation throughput on CUDA, our ``VLLMGenerator`` next to the same engine called directly
   (``bench/bench_eval.py``: tokens/s of both);
3. search: MCTS with vLLM on CUDA; then PPM-guided with the PPM through transformers on the same GPU
   (``gpu_memory_utilization`` left to the default that makes room for it) and through vLLM's pooling runner;
4. sft: bf16 SFT (TRL SFTTrainer), 20 steps;
5. ppm: bf16 PPM training (TRL RewardTrainer) on the pairs, 20 steps;
6. grpo-vllm: GRPO with step rollouts from TRL's colocated vLLM (weights synced into it each step), 2 steps;
7. grpo-transformers: the same with transformers ``generate`` on the policy, 2 steps;
8. eval: ``mathforge eval`` on 64 toy test problems with vLLM, step format, executor in the loop;
9. verl (optional): ``scripts/gpu_check_verl.sh`` when that file exists (a verl PPO step).

Prints a pass/fail table with each step's seconds and figure; exit status 1 if a step failed. Without a
GPU it prints why and exits with status 2, running nothing. Logs go to ``--out`` (runs/gpu-check).

    make gpu-check          # or: PYTHONPATH=src python scripts/gpu_check.py [--out DIR] [--only vllm search]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def no_gpu_reason() -> str | None:
    try:
        import torch
    except ImportError as err:
        return f"torch is not importable ({err})"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)"
    return None


def build(out: Path) -> str:
    """Models and data for the other steps (in this process: no GPU needed)."""
    import random

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from mathforge.data.toy import write_dataset
    from mathforge.tiny_model import build as build_model

    policy, ppm, toy = out / "small", out / "small-ppm", out / "toy"
    if not (policy / "config.json").exists():
        build_model(policy, size="small", seed=0)
    if not (ppm / "config.json").exists():
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(policy)
        model = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(ppm)
        tokenizer.save_pretrained(ppm)
    if not (toy / "meta.json").exists():
        write_dataset(toy, n_train=400, n_test=64, seed=0, progress=False)
    pairs = out / "pairs"
    pairs.mkdir(exist_ok=True)
    rng = random.Random(0)
    rows = []
    for line in (toy / "train.jsonl").read_text().splitlines():
        r = json.loads(line)
        wrong = r["solution"].replace(
            f"\\boxed{{{r['answer']}}}", f"\\boxed{{{r['answer']}{rng.randint(1, 9)}}}"
        )
        if wrong != r["solution"]:
            rows.append({"prompt": r["problem"], "chosen": r["solution"], "rejected": wrong, "id": r["id"]})
    (pairs / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"small model, PPM, {len(rows)} pairs"


def eval_recipe(out: Path) -> Path:
    """The tiny eval recipe on the toy test split only (its benchmark files may not be on the GPU machine)."""
    import yaml

    recipe = yaml.safe_load((REPO / "recipes/tiny/eval/config_toy.yaml").read_text())
    for key in ("benchmarks", "data_dir"):
        recipe.pop(key, None)
    path = out / "eval_recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def steps_plan(out: Path) -> list[tuple[str, list[str], int, str]]:
    """(name, command, time limit in s, regex of the figure to report) of every step after `build`."""
    policy, ppm, toy = out / "small", out / "small-ppm", out / "toy"
    launch1 = [PY, "-m", "accelerate.commands.launch", "--num_processes", "1", "--mixed_precision", "bf16"]
    search = [PY, "-m", "mathforge.search.mcts", "--config", str(REPO / "recipes/tiny/search/config_round1.yaml"),
              "--model_name_or_path", str(policy), "--dataset_name", str(toy), "--max_problems", "64",
              "--backend", "vllm", "--num_rollouts", "4", "--batch_problems", "64"]  # fmt: skip
    rl = ["-m", "mathforge.rl", "--config", str(REPO / "recipes/tiny/rl/config_toy.yaml"),
          "--model_name_or_path", str(policy), "--dataset_name", str(toy), "--max_steps", "2",
          "--per_device_train_batch_size", "16", "--num_generations", "4", "--use_cpu", "false", "--bf16", "true",
          "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true"]  # fmt: skip
    train = ["--use_cpu", "false", "--bf16", "true", "--max_steps", "20", "--save_strategy", "no",
             "--logging_steps", "10", "--disable_tqdm", "true"]  # fmt: skip
    plan = [
        (
            "vllm",
            [
                PY,
                str(REPO / "bench/bench_eval.py"),
                "--sizes",
                "small",
                "--prompts",
                "256",
                "--backends",
                "vllm",
                "--models",
                str(out),
            ],
            240,
            r"(\d+) tokens/s",
        ),  # fmt: skip
        (
            "search",
            [*search, "--output_file", str(out / "search/trees.jsonl")],
            240,
            r"coverage [\d.]+%.*tokens",
        ),
        (
            "search-ppm-transformers",
            [
                *search,
                "--ppm_path",
                str(ppm),
                "--selection",
                "puct",
                "--output_file",
                str(out / "search-ppm-hf/trees.jsonl"),
            ],
            240,
            r"coverage [\d.]+%",
        ),  # fmt: skip
        (
            "search-ppm-vllm",
            [
                *search,
                "--ppm_path",
                str(ppm),
                "--ppm_backend",
                "vllm",
                "--selection",
                "puct",
                "--output_file",
                str(out / "search-ppm-vllm/trees.jsonl"),
            ],
            240,
            r"coverage [\d.]+%",
        ),  # fmt: skip
        (
            "sft",
            [
                PY,
                "-m",
                "mathforge.sft",
                "--config",
                str(REPO / "recipes/tiny/sft/config_toy.yaml"),
                "--model_name_or_path",
                str(policy),
                "--dataset_name",
                str(toy),
                "--output_dir",
                str(out / "sft"),
                *train,
            ],
            240,
            r"'train_runtime': '[\d.]+'",
        ),  # fmt: skip
        (
            "ppm",
            [
                PY,
                "-m",
                "mathforge.ppm",
                "--config",
                str(REPO / "recipes/tiny/ppm/config_toy.yaml"),
                "--model_name_or_path",
                str(policy),
                "--dataset_name",
                str(out / "pairs"),
                "--output_dir",
                str(out / "ppm"),
                *train,
            ],
            240,
            r"'train_runtime': '[\d.]+'",
        ),  # fmt: skip
        (
            "grpo-vllm",
            [
                *launch1,
                *rl,
                "--output_dir",
                str(out / "grpo-vllm"),
                "--use_vllm",
                "true",
                "--vllm_mode",
                "colocate",
                "--vllm_gpu_memory_utilization",
                "0.3",
            ],
            300,
            r"'rollout/steps': '[\d.]+'",
        ),  # fmt: skip
        (
            "grpo-transformers",
            [*launch1, *rl, "--output_dir", str(out / "grpo-hf")],
            300,
            r"'rollout/steps': '[\d.]+'",
        ),  # fmt: skip
        (
            "eval",
            [
                PY,
                "-m",
                "mathforge.eval",
                "--config",
                str(eval_recipe(out)),
                "--model_name_or_path",
                str(policy),
                "--dataset_name",
                str(toy),
                "--max_problems",
                "64",
                "--output_dir",
                str(out / "eval"),
            ],
            240,
            r"pass@1 [\d.]+%",
        ),  # fmt: skip
    ]
    verl = REPO / "scripts/gpu_check_verl.sh"
    if verl.exists():
        plan.append(("verl", ["bash", str(verl), str(out)], 300, r"PASS.*|tokens/s.*"))
    return plan


def run_step(name: str, cmd: list[str], limit: int, figure: str, out: Path) -> tuple[bool, float, str]:
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=limit
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.perf_counter() - start
    text = log.read_text(errors="replace")
    if rc != 0:
        return False, seconds, f"exit {rc}; see {log}"
    found = re.findall(figure, text)
    if name == "vllm":  # ours and the same engine called directly
        return bool(found), seconds, "ours / direct tokens/s: " + " / ".join(found[:2])
    return True, seconds, (found[-1] if found else "")[:70]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs/gpu-check"))
    parser.add_argument("--only", nargs="*", help="Run only these steps (after build).")
    parser.add_argument("--plan", action="store_true", help="Print the steps' commands and exit.")
    args = parser.parse_args()
    if args.plan:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for name, cmd, limit, _ in steps_plan(Path(args.out)):
            print(f"{name} (limit {limit}s): {' '.join(cmd)}")
        return
    reason = no_gpu_reason()
    if reason:
        print(
            f"gpu-check: no GPU: {reason}. Nothing was checked; run `make gpu-check` on a machine with one."
        )
        sys.exit(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    start = time.perf_counter()
    try:
        rows.append(("build", True, time.perf_counter() - start, build(out)))
    except Exception as err:  # nothing else can run without the models
        rows.append(("build", False, time.perf_counter() - start, f"{type(err).__name__}: {err}"[:70]))
    if rows[0][1]:
        for name, cmd, limit, figure in steps_plan(out):
            if args.only and name not in args.only:
                continue
            ok, seconds, note = run_step(name, cmd, limit, figure, out)
            rows.append((name, ok, seconds, note))
            print(f"  {name}: {'pass' if ok else 'FAIL'} ({seconds:.0f}s)", flush=True)
    import torch

    print(
        f"\n{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {time.perf_counter() - start:.0f}s in all\n"
    )
    print(f"| {'step':<24} | result | seconds | figure |\n|{'-' * 26}|--------|---------|--------|")
    for name, ok, seconds, note in rows:
        print(f"| {name:<24} | {'pass' if ok else 'FAIL':<6} | {seconds:7.0f} | {note} |")
    sys.exit(0 if all(ok for _, ok, _, _ in rows) else 1)


if __name__ == "__main__":
    main()
