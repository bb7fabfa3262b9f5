"""`mathforge eval`: solve a problem set in the step format (executor in the loop) and grade the answers.

    mathforge eval --model_name_or_path runs/tiny/sft --dataset_name runs/tiny/toy --dataset_split test

Writes ``samples.jsonl`` (one line per sample: problem id, completion, extracted answer, gold,
correct, tokens, how it ended) and ``results.json`` (accuracy = pass@1 averaged over the n samples,
coverage = share of problems with at least one correct sample, mean completion tokens).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mathforge.config import parse_config
from mathforge.data.loading import DataArguments, load_from_args
from mathforge.errors import UserError


@dataclass
class EvalConfig:
    """What model to evaluate and how to decode."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Model folder or Hub id."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where samples.jsonl and results.json go."}
    )
    backend: str = field(
        default="transformers", metadata={"help": "Generation backend: vllm or transformers."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message (None: none)."})
    n: int = field(default=1, metadata={"help": "Samples per problem."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    max_new_tokens: int = field(default=256, metadata={"help": "Token limit for one step."})
    max_steps: int = field(default=16, metadata={"help": "Most steps in one solution."})
    max_code_errors: int = field(
        default=2, metadata={"help": "A solution stops after this many failing steps."}
    )
    seed: int = field(default=0, metadata={"help": "Sampling seed."})


def evaluate(config: EvalConfig, data: DataArguments, generator=None, executor=None) -> dict:
    """Run the evaluation; reuses a given generator/executor (the search and RL stages pass theirs)."""
    from mathforge import steps
    from mathforge.executor import Executor
    from mathforge.generation import SamplingConfig, load_generator
    from mathforge.grader import Grader, extract_answer
    from mathforge.rollout import rollout

    if generator is None and not config.model_name_or_path:
        raise UserError("no model: set model_name_or_path")
    problems = load_from_args(data)
    generator = generator or load_generator(config.backend, config.model_name_or_path)
    prompts = [steps.chat_prompt(generator.tokenizer, p, config.system_prompt) for p in problems["problem"]]
    sampling = SamplingConfig(
        n=config.n,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
    )
    start = time.perf_counter()
    own_executor = executor is None
    executor = executor or Executor()
    try:
        groups = rollout(prompts, generator, executor, sampling, config.max_steps, config.max_code_errors)
    finally:
        if own_executor:
            executor.close()
    grader = Grader()
    samples, per_problem = [], []
    for row, group in zip(problems, groups):
        verdicts = grader.grade_many([t.completion for t in group], [row["answer"]] * len(group))
        per_problem.append(verdicts)
        for i, (traj, ok) in enumerate(zip(group, verdicts)):
            samples.append(
                {
                    "id": row["id"],
                    "sample": i,
                    "completion": traj.completion,
                    "extracted": extract_answer(traj.answer or ""),
                    "gold": row["answer"],
                    "correct": ok,
                    "tokens": traj.num_tokens,
                    "steps": len(traj.steps),
                    "end": traj.end,
                }
            )
    grader.close()
    n_problems = len(per_problem)
    results = {
        "model": config.model_name_or_path,
        "dataset": data.dataset_name,
        "split": data.dataset_split,
        "problems": n_problems,
        "n": config.n,
        "accuracy": 100.0
        * sum(sum(v is True for v in vs) / len(vs) for vs in per_problem)
        / max(1, n_problems),
        "coverage": 100.0 * sum(any(v is True for v in vs) for vs in per_problem) / max(1, n_problems),
        "mean_tokens": sum(s["tokens"] for s in samples) / max(1, len(samples)),
        "seconds": round(time.perf_counter() - start, 2),
        "config": asdict(config),
    }
    if config.output_dir:
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "samples.jsonl.tmp", "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)
        (out / "samples.jsonl.tmp").replace(out / "samples.jsonl")
        (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> dict:
    config, data = parse_config([EvalConfig, DataArguments], argv, prog="mathforge eval")
    results = evaluate(config, data)
    print(
        f"{results['problems']} problems, n={results['n']}: accuracy {results['accuracy']:.1f}%, "
        f"coverage {results['coverage']:.1f}%, mean tokens {results['mean_tokens']:.0f} "
        f"({results['seconds']:.0f}s)"
    )
    return results


if __name__ == "__main__":
    from mathforge.cli import run_main

    sys.exit(run_main(main, sys.argv[1:], "mathforge eval"))
