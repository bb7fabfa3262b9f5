"""`mathforge eval`: solve benchmarks with a model, grade every sample, report pass@k, maj@k, token use.

    mathforge eval --model_name_or_path runs/tiny/sft --benchmarks math500 gsm8k --output_dir runs/eval
    mathforge eval --config recipes/tiny/eval/config_toy.yaml          # any key overridable
    mathforge eval --predictions preds.jsonl --benchmarks math500 --output_dir runs/eval-preds
    mathforge eval compare runs/eval-a runs/eval-b

Problems come from the benchmark registry (:mod:`mathforge.eval.benchmarks`, Hub or ``--data_dir``)
and/or any problem set given as ``--dataset_name`` (Hub id or local file, as in every stage).
Prompt formats: ``steps`` (the code-augmented step format, executor in the loop, :mod:`mathforge.rollout`),
``cot`` (a plain-text prompt, one generation, no executor) and ``chat`` (the model's chat template with
a system prompt, one generation). ``--search`` runs an inference-time search per problem instead
(:mod:`mathforge.search.inference`). Metrics are defined in :mod:`mathforge.eval.metrics`.

Output folder: ``samples.jsonl`` (one line per sample: benchmark, id, prompt, completion, extracted
answer, gold, correct, tokens, ...), ``results.json``, ``results.md``, ``accuracy.png`` and
``token_budget.png``; every file is written atomically. ``--data_parallel_size N`` runs N copies, each
on its own slice of problems and GPUs, and merges their samples (``--num_shards``/``--shard_index`` run
one slice by hand, e.g. one per node).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from mathforge.cluster import launched_shard
from mathforge.config import parse_config, to_dict, write_atomic
from mathforge.data.loading import DataArguments
from mathforge.errors import UserError
from mathforge.eval.metrics import DEFAULT_BUDGETS, average, benchmark_metrics
from mathforge.eval.parallel import launched_part, merge_if_complete, run_data_parallel
from mathforge.eval.report import compare, load_results, load_samples, paired, write_reports
from mathforge.eval.scoring import PREDICTION_COLUMNS, extraction_for, extraction_policies, score_predictions
from mathforge.generation import DTYPE_HELP
from mathforge.steps import MAX_OUTPUT_CHARS

PROMPT_FORMATS = ("steps", "cot", "chat")
SEARCH_MODES = ("none", "majority", "best_of_n", "weighted_vote", "beam", "mcts")
PPM_SEARCHES = ("best_of_n", "weighted_vote", "beam", "mcts")  # the searches that score with a PPM
# EvalConfig fields passed on to the vLLM generator as they are
VLLM_OPTIONS = (
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "max_model_len",
    "kv_cache_gib",
    "enforce_eager",
    "max_num_seqs",
    "seed",
)
COT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class EvalConfig:
    """What to evaluate, how to prompt and decode, and what to report."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Model folder or Hub id."})
    benchmarks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Registered benchmarks: math500 gsm8k aime24 aime25 amc23 olympiadbench minerva college_math."
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder with the benchmarks' local JSONL files (math500.jsonl, ...); None: the Hub."
        },
    )
    output_dir: str | None = field(default=None, metadata={"help": "Where samples, results and plots go."})
    prompt_format: str = field(
        default="steps", metadata={"help": "steps (executor in the loop), cot or chat."}
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "System message. None: none for steps (as SFT trains), a step-by-step one for chat."
        },
    )
    backend: str = field(default="vllm", metadata={"help": "Generation backend: vllm or transformers."})
    dtype: str = field(default="auto", metadata={"help": DTYPE_HELP})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM: GPUs per model copy."})
    data_parallel_size: int = field(
        default=1,
        metadata={"help": "Model copies, each on its own problems (and tensor_parallel_size GPUs)."},
    )
    gpu_memory_utilization: float | None = field(default=None, metadata={"help": "vLLM; None: its default."})
    max_model_len: int | None = field(
        default=None, metadata={"help": "vLLM context length; None: the model's."}
    )
    kv_cache_gib: float | None = field(default=None, metadata={"help": "vLLM KV cache size; None: 1 on CPU."})
    enforce_eager: bool | None = field(default=None, metadata={"help": "vLLM; None: eager on CPU only."})
    max_num_seqs: int | None = field(
        default=None, metadata={"help": "vLLM: sequences per engine step; None: its default (256 on CPU)."}
    )
    n: int = field(default=1, metadata={"help": "Samples per problem."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    max_new_tokens: int = field(
        default=1024,
        metadata={"help": "Token limit of one generation: one step (steps), the whole solution otherwise."},
    )
    max_steps: int = field(default=16, metadata={"help": "steps: most steps in one solution."})
    max_code_errors: int = field(default=2, metadata={"help": "steps: stop after this many failing steps."})
    exec_timeout_s: float = field(default=5.0, metadata={"help": "steps: wall-clock limit of one code step."})
    exec_max_output_chars: int = field(
        default=MAX_OUTPUT_CHARS,
        metadata={
            "help": "steps: a step's printed output beyond this is cut (with a marker), as in search and RL."
        },
    )
    seed: int = field(default=0, metadata={"help": "Sampling seed; the same seed repeats a run."})
    grade_timeout_s: float = field(
        default=30.0,
        metadata={
            "help": "Seconds one answer comparison may take before it counts as unknown (not correct)."
        },
    )
    answer_extraction: str = field(
        default="strict",
        metadata={
            "help": "How a completion's answer is found: strict, lenient or any (eval/README.md), for all "
            "benchmarks, and/or NAME=POLICY per benchmark, e.g. 'strict gsm8k=lenient'."
        },
    )
    search: str = field(
        default="none",
        metadata={"help": "none, majority, best_of_n, weighted_vote (PPM-weighted majority), beam or mcts."},
    )
    ppm_path: str | None = field(default=None, metadata={"help": "PPM for best_of_n, beam and mcts."})
    ppm_device: str | None = field(
        default=None,
        metadata={
            "help": "Where the transformers PPM runs (cuda, cuda:1, cpu). None: cuda if available, else cpu."
        },
    )
    ppm_backend: str = field(
        default="transformers",
        metadata={"help": "PPM scorer: transformers, or vllm (vLLM's pooling runner, a second engine)."},
    )
    ppm_gpu_memory_utilization: float = field(
        default=0.2, metadata={"help": "ppm_backend vllm: the PPM engine's fraction of the GPU."}
    )
    search_n: int = field(
        default=8, metadata={"help": "majority/best_of_n/weighted_vote: solutions per problem."}
    )
    beams: int = field(default=3, metadata={"help": "beam: B1, beams kept."})
    beam_samples: int = field(default=4, metadata={"help": "beam: B2, steps sampled per beam."})
    mcts_rollouts: int = field(default=16, metadata={"help": "mcts: rollouts per problem."})
    mcts_candidates: int = field(default=4, metadata={"help": "mcts: steps sampled per expansion."})
    pass_k: list[int] | None = field(
        default=None, metadata={"help": "k values of pass@k/maj@k; None: 1,2,4..n."}
    )
    token_budgets: list[int] = field(
        default_factory=lambda: list(DEFAULT_BUDGETS), metadata={"help": "Budgets B of accuracy-at-B tokens."}
    )
    batch_problems: int = field(
        default=256, metadata={"help": "Problems per generation call (progress steps)."}
    )
    predictions: str | None = field(
        default=None, metadata={"help": "Score this JSONL of completions instead of generating."}
    )
    id_column: str = field(default="id", metadata={"help": "predictions: problem id column."})
    prediction_column: str | None = field(
        default=None,
        metadata={"help": f"predictions: completion column; None: first of {PREDICTION_COLUMNS}."},
    )
    gold_column: str | None = field(
        default=None,
        metadata={"help": "predictions: gold column; None: 'gold' if present, else join on benchmark."},
    )
    shard_index: int = field(
        default=0, metadata={"help": "Run only the problems i with i mod num_shards == this."}
    )
    num_shards: int = field(default=1, metadata={"help": "See shard_index."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, not {self.prompt_format!r}"
            )
        if self.search not in SEARCH_MODES:
            raise ValueError(f"search must be one of {', '.join(SEARCH_MODES)}, not {self.search!r}")
        if self.search != "none" and self.prompt_format != "steps":
            raise ValueError("search works on the steps format; use --prompt_format steps")
        if self.n < 1 or self.max_new_tokens < 1 or self.batch_problems < 1 or self.data_parallel_size < 1:
            raise ValueError("n, max_new_tokens, batch_problems and data_parallel_size must be at least 1")
        if (self.n > 1 or self.search != "none") and self.temperature <= 0:
            raise ValueError("several samples (n > 1 or a search) need sampling: set --temperature, e.g. 0.7")
        if self.search != "none" and self.n != 1:
            raise ValueError("a search returns one answer per problem: leave n at 1 and set search_n/beams")
        if self.search in PPM_SEARCHES and not self.ppm_path:
            raise ValueError(f"--search {self.search} needs a PPM to score solutions: set ppm_path")
        extraction_policies(self.answer_extraction)  # a one-line error for an unknown policy
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(
                f"need 0 <= shard_index < num_shards, got {self.shard_index} and {self.num_shards}"
            )


# --- problem sets -------------------------------------------------------------------------------------


def problem_sets(config: EvalConfig, data: DataArguments) -> list[tuple[str, str, object]]:
    """(name, title, dataset) of every requested problem set, in order."""
    from mathforge.data.loading import load_from_args
    from mathforge.eval.benchmarks import get_benchmark, load_benchmark

    sets = []
    for name in dict.fromkeys(get_benchmark(b).name for b in config.benchmarks or []):  # once each
        bench = get_benchmark(name)
        sets.append((bench.name, bench.title, load_benchmark(bench.name, config.data_dir, data.max_problems)))
    if data.dataset_name:
        name = Path(data.dataset_name.rstrip("/")).stem or data.dataset_name
        sets.append((name, name, load_from_args(data)))
    if not sets:
        raise UserError("nothing to evaluate: set --benchmarks (e.g. math500 gsm8k) or --dataset_name")
    if config.num_shards > 1:
        sets = [(n, t, ds.select(range(config.shard_index, len(ds), config.num_shards))) for n, t, ds in sets]
    return sets


def build_prompt(tokenizer, problem: str, config: EvalConfig) -> str:
    from mathforge import steps

    if config.prompt_format == "cot":  # plain text, for base models: no chat template
        return f"Question: {problem}\n{COT_INSTRUCTION}\nAnswer: "
    system = config.system_prompt
    if config.prompt_format == "chat" and system is None:
        system = COT_INSTRUCTION
    return steps.chat_prompt(tokenizer, problem, system or None)


# --- solving ------------------------------------------------------------------------------------------


def _solve(prompts: list[str], generator, executor, scorer, grader, config: EvalConfig) -> list[list[dict]]:
    """Per prompt, its samples: completion, the text to grade, tokens and how each ended."""
    from mathforge.generation import SamplingConfig
    from mathforge.rollout import rollout

    sampling = SamplingConfig(
        n=config.n,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        # a base model continues with the next "Question:" after its answer
        stop=["\nQuestion:"] if config.prompt_format == "cot" else [],
        seed=config.seed,
    )
    if config.search != "none":
        answers = _search(prompts, generator, executor, scorer, grader, replace(sampling, seed=None), config)
        return [
            [{"completion": a.completion or "", "graded": a.answer or "", "tokens": a.tokens, "end": None}]
            for a in answers
        ]
    if config.prompt_format == "steps":
        groups = rollout(prompts, generator, executor, sampling, config.max_steps, config.max_code_errors)
        return [
            [
                {
                    "completion": t.completion,
                    "graded": t.answer or "",
                    "tokens": t.num_tokens,
                    "steps": len(t.steps),
                    "end": t.end,
                }
                for t in group
            ]
            for group in groups
        ]
    outputs = generator.generate(prompts, sampling)
    return [
        [
            {"completion": c.text, "graded": c.text, "tokens": c.num_tokens, "end": c.finish_reason}
            for c in group
        ]
        for group in outputs
    ]


def _search(prompts, generator, executor, scorer, grader, sampling, config: EvalConfig):
    """One answer per prompt from the inference-time search ``config.search``."""
    from mathforge.rollout import rollout
    from mathforge.search import inference

    sampling = replace(sampling, n=config.beam_samples if config.search == "beam" else config.search_n)
    if config.search in ("majority", "best_of_n", "weighted_vote"):
        groups = rollout(prompts, generator, executor, sampling, config.max_steps, config.max_code_errors)
        if config.search == "majority":
            return inference.majority_vote(groups, grader)
        if config.search == "weighted_vote":
            return inference.weighted_vote(prompts, groups, scorer, grader)
        return inference.best_of_n(prompts, groups, scorer)
    if config.search == "beam":
        return inference.step_beam_search(
            prompts,
            generator,
            executor,
            scorer,
            sampling,
            config.beams,
            config.max_steps,
            config.max_code_errors,
        )
    from mathforge.search.mcts import SearchConfig

    search_config = SearchConfig(
        num_rollouts=config.mcts_rollouts,
        num_candidates=config.mcts_candidates,
        selection="puct",
        max_depth=config.max_steps,
        max_code_errors=config.max_code_errors,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
    )
    return inference.mcts(prompts, generator, executor, scorer, search_config)


def build_generator(config: EvalConfig):
    from mathforge.generation import load_generator

    if not config.model_name_or_path:
        raise UserError("no model: set model_name_or_path (or score completions with --predictions)")
    vllm = {name: getattr(config, name) for name in VLLM_OPTIONS} if config.backend == "vllm" else {}
    return load_generator(config.backend, config.model_name_or_path, dtype=config.dtype, **vllm)


def generate_samples(
    config: EvalConfig, data: DataArguments, generator=None, executor=None, grader=None
) -> tuple[list[dict], dict]:
    """Solve and grade every problem set; returns (samples, {name: (title, seconds)})."""
    import random

    import torch
    from tqdm.auto import tqdm

    from mathforge.executor import Executor, ExecutorConfig
    from mathforge.grader import Grader

    sets = problem_sets(config, data)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    generator = generator or build_generator(config)
    scorer = None
    if config.search in PPM_SEARCHES:
        from mathforge.search.mcts import ppm_of

        scorer = ppm_of(config)
    own_executor = executor is None and config.prompt_format == "steps"
    if own_executor:
        executor = Executor(
            ExecutorConfig(timeout_s=config.exec_timeout_s, max_output_chars=config.exec_max_output_chars)
        )
    own_grader = grader is None
    if own_grader:
        grader = Grader(timeout=config.grade_timeout_s, workers=2)
    samples, info = [], {}
    try:
        for name, title, ds in sets:
            start = time.perf_counter()
            bar = tqdm(total=len(ds), desc=f"eval {name}", unit="problem", disable=not config.progress)
            for lo in range(0, len(ds), config.batch_problems):
                rows = ds.select(range(lo, min(lo + config.batch_problems, len(ds))))
                prompts = [build_prompt(generator.tokenizer, p, config) for p in rows["problem"]]
                groups = _solve(prompts, generator, executor, scorer, grader, config)
                flat = [(i, j, s) for i, group in enumerate(groups) for j, s in enumerate(group)]
                policy = extraction_for(config.answer_extraction, name)
                verdicts = grader.grade_many(
                    [s["graded"] for _, _, s in flat], [rows[i]["answer"] for i, _, _ in flat], policy
                )
                for (i, j, s), ok in zip(flat, verdicts):
                    row = rows[i]
                    record = {
                        "benchmark": name,
                        "id": str(row["id"]),
                        "index": (lo + i) * config.num_shards + config.shard_index,
                        "sample": j,
                        "prompt": prompts[i],
                        "completion": s["completion"],
                        "extracted": grader.final_answer(s["graded"], policy),
                        "gold": row["answer"],
                        "correct": ok,
                        "tokens": s["tokens"],
                        "end": s["end"],
                    }
                    if "steps" in s:
                        record["steps"] = s["steps"]
                    for column in ("subject", "level"):
                        if column in row:
                            record[column] = row[column]
                    samples.append(record)
                bar.update(len(rows))
            bar.close()
            info[name] = (title, time.perf_counter() - start)
    finally:
        if own_grader:
            grader.close()
        if own_executor:
            executor.close()
    return samples, info


# --- results ------------------------------------------------------------------------------------------


def summarize(
    samples: list[dict], info: dict, config: EvalConfig, data: DataArguments | None, started: float
) -> dict:
    per_benchmark = {}
    for name, (title, seconds) in info.items():
        metrics = benchmark_metrics(
            [s for s in samples if s["benchmark"] == name], config.pass_k, config.token_budgets
        )
        per_benchmark[name] = {"title": title, **metrics, "seconds": round(seconds, 2)}
    avg = average(per_benchmark)
    config_dict = to_dict(config, data) if data is not None else to_dict(config)
    return {
        "model": config.model_name_or_path,
        "predictions": config.predictions,
        "benchmarks": per_benchmark,
        "average": avg,
        # the headline numbers at the top level too, as the first version of this command returned them
        "accuracy": avg["pass@1"],
        "coverage": avg["coverage"],
        "mean_tokens": avg.get("mean_tokens"),
        "problems": sum(r["problems"] for r in per_benchmark.values()),
        "n": None if config.predictions else config.n,
        "seconds": round(time.perf_counter() - started, 2),
        "config": config_dict,
    }


def write_samples(samples: list[dict], out_dir: str | os.PathLike) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "samples.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))


def evaluate(
    config: EvalConfig, data: DataArguments | None = None, generator=None, executor=None, grader=None
) -> dict:
    """Run the evaluation and write its files (when output_dir is set); returns results.json's content.

    Reuses a given generator, executor and grader (the search and RL stages pass theirs)."""
    started = time.perf_counter()
    data = data or DataArguments(dataset_name=None)
    shard = launched_shard()
    if config.predictions:
        samples, info = score_predictions(config, data)
    elif shard.world_size > 1 and generator is None:  # one of N copies under accelerate launch
        evaluate(launched_part(config, shard), data)  # launched_part cleared the launcher's variables
        merged = merge_if_complete(config.output_dir, shard.world_size)
        if merged is None:
            return {"shard": shard.rank, "merged_by_another_copy": True}
        samples, info = merged
    elif config.data_parallel_size > 1 and generator is None:
        samples, info = run_data_parallel(config, data)
    else:
        samples, info = generate_samples(config, data, generator, executor, grader)
    results = summarize(samples, info, config, data, started)
    if config.output_dir:
        write_samples(samples, config.output_dir)
        write_reports(results, config.output_dir)
    return results


# --- command line -------------------------------------------------------------------------------------


def compare_main(argv: list[str]) -> str:
    if len(argv) != 2 or any(a.startswith("-") for a in argv):
        raise UserError("usage: mathforge eval compare RESULTS_DIR_A RESULTS_DIR_B")
    a, b = load_results(argv[0]), load_results(argv[1])
    samples_a, samples_b = load_samples(argv[0]), load_samples(argv[1])
    pairs = paired(samples_a, samples_b) if samples_a and samples_b else None
    table = compare(a, b, "A", "B", pairs)
    print(f"A = {argv[0]}\nB = {argv[1]}\n\n{table}", end="")
    return table


def config_types(recipe: dict | None = None) -> list[type]:
    """The option dataclasses `mathforge eval` parses (evolve checks step recipes against them)."""
    return [EvalConfig, DataArguments]


def main(argv: list[str] | None = None) -> dict | str:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        return compare_main(argv[1:])
    config, data = parse_config(config_types(), argv, prog="mathforge eval")
    results = evaluate(config, data)
    if results.get("merged_by_another_copy"):
        print(f"copy {results['shard']}: shard written; the last copy to finish merges them")
        return results
    for r in results["benchmarks"].values():
        extra = f", mean tokens {r['mean_tokens']:.0f}" if "mean_tokens" in r else ""
        print(f"{r['title']}: {r['problems']} problems, n={r['n']}: pass@1 {r['pass@1']:.1f}%{extra}")
    if config.output_dir:
        print(
            f"wrote {config.output_dir}/results.md, results.json, samples.jsonl and plots ({results['seconds']:.0f}s)"
        )
    return results
