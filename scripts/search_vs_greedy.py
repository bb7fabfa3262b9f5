"""Search coverage vs greedy accuracy of a tiny model fine-tuned on toy teacher solutions.

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/search_vs_greedy.py [--model runs/demo/round_0/sft] [--n 200]

On the first ``--n`` held-out toy problems (the test split, disjoint from training by construction):

* greedy accuracy: ``mathforge eval`` (temperature 0, executor in the loop), one solution per problem;
* search coverage: round-1 MCTS (``mathforge search``, terminals graded against the gold answer),
  share of problems with at least one correct trajectory in their tree.

The model is ``--model``; when that folder holds no model, it is built the way ``make demo`` does
(tiny model -> toy data -> ``mathforge sft`` with the toy recipe, ``--sft_steps`` steps). Trees and
eval samples go to ``--output_dir``; a re-run continues the search where it stopped.
"""

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ensure_policy(model: Path, data: Path, sft_steps: int) -> None:
    from mathforge.data.toy import write_dataset
    from mathforge.sft import main as sft
    from mathforge.tiny_model import build

    if not (data / "meta.json").exists():
        write_dataset(data, n_train=3000, n_test=300, seed=0, progress=False)
    if (model / "model.safetensors").exists():
        return
    base = model.parent / "tiny-model"
    if not (base / "config.json").exists():
        build(base, size="tiny", seed=0)
    sft(
        [
            "--config", str(REPO / "recipes/tiny/sft/config_toy.yaml"), "--model_name_or_path", str(base),
            "--dataset_name", str(data), "--output_dir", str(model), "--max_steps", str(sft_steps),
        ]
    )  # fmt: skip


def main() -> None:
    from mathforge.data.loading import DataArguments
    from mathforge.eval import EvalConfig, evaluate
    from mathforge.generation import load_generator
    from mathforge.search.mcts import SearchConfig, read_trees, search

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo/round_0/sft")
    parser.add_argument("--data", default="runs/demo/round_0/toy", help="toy data folder (built if missing)")
    parser.add_argument("--output_dir", default="runs/tiny/search_vs_greedy")
    parser.add_argument("--n", type=int, default=200, help="held-out problems (>= 200 for the real figure)")
    parser.add_argument("--sft_steps", type=int, default=600, help="if the model must be built")
    parser.add_argument("--num_rollouts", type=int, default=8)
    parser.add_argument("--num_candidates", type=int, default=5)
    parser.add_argument("--max_depth", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch_problems", type=int, default=64)
    parser.add_argument("--backend", default="vllm", choices=["vllm", "transformers"])
    parser.add_argument("--gpu_memory_utilization", type=float, help="vllm: share of (GPU or host) memory")
    args = parser.parse_args()

    model, data, out = Path(args.model), Path(args.data), Path(args.output_dir)
    ensure_policy(model, data, args.sft_steps)
    problems = DataArguments(dataset_name=str(data), dataset_split="test", max_problems=args.n)

    extra = {"gpu_memory_utilization": args.gpu_memory_utilization} if args.backend == "vllm" else {}
    generator = load_generator(args.backend, str(model), **extra)  # one engine for both runs
    greedy_config = EvalConfig(
        model_name_or_path=str(model), output_dir=str(out / "greedy"), backend=args.backend
    )
    greedy = evaluate(greedy_config, problems, generator=generator)
    config = SearchConfig(
        model_name_or_path=str(model),
        backend=args.backend,
        num_rollouts=args.num_rollouts,
        num_candidates=args.num_candidates,
        max_depth=args.max_depth,
        temperature=args.temperature,
        batch_problems=args.batch_problems,
        output_file=str(out / "trees.jsonl"),
    )
    summary = search(config, problems, generator=generator)
    trees = {t["id"]: t for t in read_trees(config.output_file)}
    ids = [json.loads(line)["id"] for line in (data / "test.jsonl").read_text().splitlines()][: args.n]
    solved = sum(bool(trees[i]["solved"]) for i in ids if i in trees)
    report = {
        "model": str(model),
        "problems": len(ids),
        "greedy_accuracy": round(greedy["accuracy"], 2),
        "search_coverage": round(100.0 * solved / len(ids), 2),
        "search": f"MCTS round 1, {args.num_rollouts} rollouts x {args.num_candidates} candidates, uct c=2",
        "greedy_mean_tokens": round(greedy["mean_tokens"], 1),
        "search_tokens_per_problem": round(sum(trees[i]["tokens"] for i in ids if i in trees) / len(ids), 1),
        "greedy_seconds": greedy["seconds"],
        "search_seconds_this_run": summary["seconds"],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
