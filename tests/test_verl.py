"""The verl backend of `mathforge rl`, CPU tier that runs in the main environment (`make test`).

verl is not installed here, nor is Hydra (it pins antlr4 4.9, which breaks math-verify's LaTeX parser): the
launcher composes verl 0.9.1's real ``ppo_trainer`` config with Hydra in the config environment
(.venv-verl-config, `make venv-verl-config`, which `make test` builds), in a subprocess. So the agent loop's :func:`run_steps` is driven by a
scripted generator standing in for verl's vLLM server (which cannot run on this CPU machine); the
tokenizer, the executor and the grader are the real ones. The tier that imports verl whole is
tests/test_verl_env.py (`make test-verl`, in .venv-verl).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mathforge.errors import UserError
from mathforge.rewards import RewardArguments
from mathforge.verl import agent_loop, export, launcher
from mathforge.verl.agent_loop import AsyncExecutor, Chunk, StepLoopConfig, run_steps
from mathforge.verl.reward import compute_score

REPO = Path(__file__).resolve().parents[1]
RECIPES = [
    REPO / "recipes/Qwen2.5-Math-1.5B/rl/config_ppo_verl.yaml",
    REPO / "recipes/Qwen2.5-Math-7B/rl/config_ppo_verl.yaml",
    REPO / "recipes/Qwen2.5-Math-1.5B/rl/config_grpo_verl.yaml",
    REPO / "recipes/tiny/rl/config_ppo_verl.yaml",
]
SOLUTION = "<step>\nx = 6 * 7\nprint(x)\n</step>\n<output>\n42\n</output>\n<answer>\nThe answer is \\boxed{42}\n</answer>\n"


def test_main_environment_keeps_hydra_out_and_antlr_4_13():
    # Hydra's antlr4 4.9 pin makes the grader misread `50\%`: the config environment has it instead
    import importlib.metadata
    import importlib.util

    assert importlib.util.find_spec("hydra") is None and importlib.util.find_spec("omegaconf") is None
    assert importlib.metadata.version("antlr4-python3-runtime") == "4.13.2"
    code = "import sys, mathforge.verl.launcher; print(','.join(m for m in ('hydra', 'omegaconf') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_light_parts_import_without_torch_trl_vllm():
    code = (
        "import sys; import mathforge.verl.reward, mathforge.verl.agent_loop, mathforge.verl.export; "
        "print(','.join(m for m in ('torch', 'trl', 'vllm', 'transformers', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --- exporter --------------------------------------------------------------------------------------------------


def test_export_round_trip(tmp_path):
    data = tmp_path / "train.jsonl"
    problems = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(5)]
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    out = export.export(str(data), tmp_path / "out" / "train.parquet", system_prompt="Be brief.")
    rows = export.read_parquet(out)
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["0", "2", "4", "6", "8"]
    assert rows[3]["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 3 + 3?"},
    ]
    assert rows[3]["data_source"] == "mathforge/train" and rows[3]["ability"] == "math"
    assert rows[3]["extra_info"]["problem"] == "What is 3 + 3?" and rows[3]["extra_info"]["index"] == 3
    assert rows[0]["agent_name"] == "mathforge_steps"
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_export_without_system_prompt_and_empty(tmp_path):
    rows = export.rows_from_problems([{"id": "a", "problem": "p", "answer": "1"}], "src", None)
    assert rows[0]["prompt"] == [{"role": "user", "content": "p"}]
    with pytest.raises(UserError, match="no problems"):
        export.write_parquet([], tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


# --- reward ----------------------------------------------------------------------------------------------------


def _call(solution, gold, extra_info=None, **kwargs):
    """verl's naive reward manager's exact call, from a worker thread as verl makes it."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(
            lambda: compute_score(
                data_source="mathforge/toy",
                solution_str=solution,
                ground_truth=gold,
                extra_info=extra_info,
                **kwargs,
            )
        ).result()


def test_reward_from_threads_correct_wrong_garbage_empty():
    handler = signal.getsignal(signal.SIGALRM)
    kwargs = {"reward_funcs": ["accuracy", "format", "cosine"], "reward_weights": [2.0, 1.0, 1.0]}
    extra = {"rollout_end": "answer", "model_tokens": 20}
    cases = [
        (SOLUTION, "42"),
        (SOLUTION.replace("{42}", "{41}"), "42"),
        ("\x00\ufffd<step>\n<<<<\\boxed{", "42"),
        ("", "42"),
        (None, "42"),
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(
                lambda c: compute_score(
                    data_source="d", solution_str=c[0], ground_truth=c[1], extra_info=dict(extra), **kwargs
                ),
                cases,
            )
        )
    right, wrong, garbage, empty, none = results
    assert right["acc"] == 1.0 and right["format"] == 1.0 and right["cosine"] > 0.9
    assert right["score"] == pytest.approx(2.0 + 1.0 + right["cosine"])
    assert wrong["acc"] == 0.0 and wrong["cosine"] < -0.9
    assert wrong["score"] == pytest.approx(1.0 + wrong["cosine"])
    for r in (garbage, empty, none):
        assert r["acc"] == 0.0 and r["format"] == 0.0 and r["reward_error"] == 0.0 and r["score"] < 0
    assert all(set(r) == set(right) for r in results)
    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGALRM) is handler


def test_reward_unparseable_gold_is_never_one():
    result = _call(SOLUTION, "", {"rollout_end": "answer"}, reward_funcs=["accuracy"])
    assert result["gold_unparseable"] == 1.0 and result["acc"] == 0.0 and result["score"] == 0.0
    result = _call(SOLUTION, "\\boxed{", {"rollout_end": "answer"}, reward_funcs=["accuracy"])
    assert result["score"] == 0.0


def test_reward_grades_only_trajectories_that_ended_on_an_answer():
    cut = _call(SOLUTION, "42", {"rollout_end": "length"}, reward_funcs=["accuracy"])
    assert cut["acc"] == 0.0 and cut["answered"] == 0.0
    assert _call(SOLUTION, "42", {"rollout_end": "answer"}, reward_funcs=["accuracy"])["answered"] == 1.0


def test_reward_length_terms_use_model_tokens():
    kwargs = {"reward_funcs": ["soft_overlong"], "overlong_max_len": 100, "overlong_buffer": 50}
    assert _call(SOLUTION, "42", {"model_tokens": 40}, **kwargs)["score"] == 0.0
    assert _call(SOLUTION, "42", {"model_tokens": 75}, **kwargs)["score"] == pytest.approx(-0.5)
    assert _call(SOLUTION, "42", {"model_tokens": 500}, **kwargs)["score"] == -1.0


def test_reward_never_raises():
    bad = _call(SOLUTION, "42", None, reward_funcs=["accuracy", "format"], reward_weights=[1.0])
    assert bad["reward_error"] == 1.0 and bad["score"] == 0.0
    unknown = _call(SOLUTION, "42", None, reward_funcs=["kimi_length"])
    assert unknown["reward_error"] == 1.0


@pytest.fixture(scope="module")
def tiny_ppm(tiny_model, tmp_path_factory):
    """A real (untrained) PPM: the tiny model with a one-label sequence-classification head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("ppm") / "ppm"
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(path)
    return path


def test_reward_ppm_folds_step_scores_to_one_number(tiny_ppm):
    from mathforge.ppm import load_scorer
    from mathforge.rewards import step_prefixes

    scorer = load_scorer(str(tiny_ppm), device="cpu")
    head = scorer.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 6 * 7?"}], tokenize=False, add_generation_prompt=True
    )
    two_steps = "<step>\nx = 6\nprint(x)\n</step>\n<output>\n6\n</output>\n" + SOLUTION
    scores = scorer([head + prefix for prefix in step_prefixes(two_steps)])
    assert len(scores) == 3 and len(set(scores)) > 1
    extra = {"problem": "What is 6 * 7?", "rollout_end": "answer"}
    for aggregation, expected in (("min", min(scores)), ("mean", sum(scores) / 3), ("last", scores[-1])):
        result = _call(
            two_steps, "42", extra, reward_funcs=["ppm"], ppm_path=str(tiny_ppm), ppm_aggregation=aggregation
        )
        assert result["reward_error"] == 0.0
        assert result["ppm"] == pytest.approx(expected, abs=1e-5) and result["score"] == result["ppm"]


# --- agent loop ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def executor():
    from mathforge.executor import Executor, ExecutorConfig

    with Executor(ExecutorConfig(timeout_s=5, max_workers=2)) as ex:
        yield ex


class ScriptedServer:
    """Stands in for verl's vLLM server (no GPU here): returns scripted chunks, token ids in and out."""

    def __init__(self, tokenizer, chunks: list[str], logprob: float | None = None):
        self.tokenizer, self.chunks, self.logprob = tokenizer, list(chunks), logprob
        self.calls: list[tuple[list[int], dict]] = []

    async def __call__(self, token_ids, params):
        self.calls.append((list(token_ids), dict(params)))
        ids = self.tokenizer.encode(self.chunks.pop(0), add_special_tokens=False)[: params["max_tokens"]]
        return Chunk(ids, [self.logprob] * len(ids) if self.logprob is not None else None)


def _run(tokenizer, executor, chunks, response_length=400, logprob=None, **config):
    server = ScriptedServer(tokenizer, chunks, logprob)
    prompt = tokenizer.encode(
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
    )
    params = {"temperature": 1.0, "logprobs": logprob is not None}

    async def go():
        return await run_steps(
            prompt,
            server,
            tokenizer,
            AsyncExecutor(executor),
            params,
            StepLoopConfig(**config),
            response_length,
        )

    return asyncio.run(go()), server, prompt


def test_agent_loop_runs_steps_in_the_executor_and_masks_outputs(tokenizer, executor):
    chunks = [
        "<step>\nx = 6 * 7\nprint(x)\n</step>",
        "<step>\nprint(x + 1)\n</step>",
        "<answer>\n\\boxed{43}\n</answer>",
    ]
    result, server, prompt = _run(tokenizer, executor, chunks, logprob=-0.5)
    assert result.end == "answer" and result.answer == "\\boxed{43}"
    assert [s.output for s in result.steps] == ["42\n", "43\n"]  # the second step saw the first's state
    written = [i for i, m in zip(result.response_ids, result.response_mask) if m]
    assert written == sum((tokenizer.encode(c, add_special_tokens=False) for c in chunks), [])
    system = tokenizer.decode([i for i, m in zip(result.response_ids, result.response_mask) if not m])
    # what mathforge.rollout appends too: each tag's line end, the output blocks, the end of the turn
    assert system == "\n<output>\n42\n</output>\n\n<output>\n43\n</output>\n\n<|im_end|>"
    assert result.response_logprobs == [-0.5 if m else 0.0 for m in result.response_mask]
    # each call continues exactly the prompt plus the response so far, outputs included
    assert server.calls[1][0] == prompt + result.response_ids[: len(server.calls[1][0]) - len(prompt)]
    assert "42" in tokenizer.decode(server.calls[1][0][len(prompt) :])
    params = server.calls[0][1]
    assert params["stop"] == ["</step>", "</answer>", "<output>"] and params["include_stop_str_in_output"]
    assert params["max_tokens"] == 256 and "stop_token_ids" not in params


def test_agent_loop_model_written_output_and_cut_chunks_end_it(tokenizer, executor):
    faked, _, _ = _run(tokenizer, executor, ["<step>\nprint(1)\n<output>"])
    assert faked.end == "invalid" and faked.steps == [] and all(faked.response_mask)
    assert faked.model_tokens == len(faked.response_ids) > 0
    cut, _, _ = _run(tokenizer, executor, ["<step>\n" + "y = 1\n" * 200], max_step_tokens=16)
    assert cut.end == "length" and cut.response_ids and len(cut.response_ids) == 16


def test_agent_loop_caps_steps_errors_and_length(tokenizer, executor):
    step = "<step>\nprint(2)\n</step>"
    capped, server, _ = _run(tokenizer, executor, [step] * 5, max_solution_steps=3)
    assert capped.end == "max_steps" and len(capped.steps) == 3 and len(server.calls) == 3
    failing = "<step>\n1 / 0\n</step>"
    errors, _, _ = _run(tokenizer, executor, [failing] * 5, max_code_errors=1)
    assert errors.end == "code_errors" and errors.code_errors == 2
    assert "ZeroDivisionError" in errors.steps[0].error
    short, server, _ = _run(tokenizer, executor, [step] * 50, response_length=40)
    assert short.end == "length" and len(short.response_ids) == len(short.response_mask) == 40
    assert all(p["max_tokens"] <= 40 for _, p in server.calls)


def test_agent_loop_text_format_one_generation(tokenizer):
    result, server, _ = _run(tokenizer, None, ["The answer is \\boxed{4}<|im_end|>"], rollout_format="text")
    assert result.end == "answer" and len(server.calls) == 1 and "stop" not in server.calls[0][1]
    assert all(result.response_mask)


def test_verl_agent_class_is_absent_without_verl():
    assert agent_loop.AgentLoopBase is None  # the main environment cannot import verl (no ray)


# --- launcher ------------------------------------------------------------------------------------------------


def _parse(path, *extra):
    from mathforge.config import parse_config

    return parse_config(
        [launcher.VerlArguments, StepLoopConfig, RewardArguments], ["--config", str(path), *extra], prog="t"
    )


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.parent.name}-{p.stem}")
def test_shipped_recipes_compose_against_verl(recipe):
    args, loop, reward = _parse(recipe)
    overrides = launcher.build_overrides(args, loop, reward)
    config = launcher.compose(overrides)
    ppo = args.algorithm == "ppo"
    assert config.algorithm.adv_estimator == ("gae" if ppo else "grpo")
    critic_keys = [o for o in overrides if o.lstrip("+").startswith(("critic.", "trainer.critic_warmup"))]
    assert bool(critic_keys) == ppo
    if ppo:
        assert config.critic.optim.lr == args.critic_learning_rate
        assert config.critic.model.override_config.attn_implementation == "sdpa"
    n_gpus = config.trainer.nnodes * config.trainer.n_gpus_per_node
    sequences = config.data.train_batch_size * config.actor_rollout_ref.rollout.n
    assert sequences % n_gpus == 0
    mini = config.actor_rollout_ref.actor.ppo_mini_batch_size * config.actor_rollout_ref.rollout.n
    assert (mini // n_gpus) % config.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu == 0
    assert config.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert config.reward.custom_reward_function.path == "pkg://mathforge.verl.reward"
    assert config.custom_reward_function.path is None  # the legacy key main_ppo ignores is never set
    kwargs = config.reward.custom_reward_function.reward_kwargs
    assert list(kwargs.reward_funcs) == args.reward_funcs and kwargs.cosine_max_len == reward.cosine_max_len
    assert config.actor_rollout_ref.rollout.agent.default_agent_loop == "mathforge_steps"
    assert config.actor_rollout_ref.rollout.skip_tokenizer_init is False


def test_misspelled_key_fails_composition():
    args, loop, reward = _parse(
        RECIPES[0], "--verl_overrides", "actor_rollout_ref.actor.ppo_mini_bach_size=4"
    )
    with pytest.raises(UserError, match="ppo_mini_bach_size"):
        launcher.compose(launcher.build_overrides(args, loop, reward))


def test_missing_config_environment_says_how_to_build_it(tmp_path, monkeypatch, capsys):
    from mathforge.cli import main

    monkeypatch.setenv(launcher.CONFIG_PYTHON_VAR, str(tmp_path / "nope" / "bin" / "python"))
    with pytest.raises(UserError, match="make venv-verl-config"):
        launcher.compose(["trainer.nnodes=1"])
    assert main(["rl", "--backend", "verl", "--config", str(RECIPES[0]), "--dry_run"]) != 0
    assert "make venv-verl-config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--nnodes", "3"], "divisible by nnodes x n_gpus_per_node"),
        (["--ppo_micro_batch_size_per_gpu", "5"], "ppo_micro_batch_size_per_gpu"),
        (["--ppo_mini_batch_size", "48"], "must divide train_batch_size"),
        (["--reward_funcs", "kimi_length"], "not available on the verl backend"),
        (["--algorithm", "grpo", "--num_generations", "1", "--train_batch_size", "64"], "num_generations"),
    ],
)
def test_recipe_checks(options, message):
    args, loop, reward = _parse(RECIPES[0], *options)
    with pytest.raises(UserError, match=message):
        launcher.check(args, loop, reward)


def test_cli_dry_run_dispatches_to_verl(capsys):
    from mathforge.cli import main

    assert main(["rl", "--backend", "verl", "--config", str(RECIPES[2]), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "verl.trainer.main_ppo" in out and "algorithm.adv_estimator=grpo" in out
    assert "grpo (no critic)" in out and "critic." not in out
    assert main(["rl", "--config", str(RECIPES[0]), "--dry_run", "--algorithm", "sarsa"]) == 2


def test_dry_run_and_a_missing_verl_environment_write_nothing(tmp_path, capsys):
    out = tmp_path / "rl"
    args, loop, reward = _parse(RECIPES[3], "--output_dir", str(out), "--dry_run")
    launcher.run(args, loop, reward)
    assert "dry run: " in capsys.readouterr().out and not out.exists()
    args, loop, reward = _parse(RECIPES[3], "--output_dir", str(out), "--verl_python", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="make venv-verl"):
        launcher.run(args, loop, reward)
    assert not out.exists()


def test_merge_reads_verls_checkpoint_tracker(tmp_path):
    # the layout verl's checkpoint manager writes: <dir>/latest_checkpointed_iteration.txt, global_step_N/actor
    assert launcher.last_checkpoint(tmp_path) is None
    (tmp_path / "global_step_3" / "actor").mkdir(parents=True)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("3")
    actor = launcher.last_checkpoint(tmp_path)
    assert actor == tmp_path / "global_step_3" / "actor"
    args, _, _ = _parse(RECIPES[3], "--output_dir", str(tmp_path / "hf"))
    cmd = launcher.merge_command(args, actor)
    assert cmd[1:6] == ["-m", "verl.model_merger", "merge", "--backend", "fsdp"]
    assert cmd[cmd.index("--target_dir") + 1] == str((tmp_path / "hf").resolve())


def test_ray_job_submit_on_a_cluster():
    args, loop, reward = _parse(RECIPES[2], "--ray_address", "http://head:8265")
    cmd = launcher.command(args, launcher.build_overrides(args, loop, reward))
    assert cmd[1:5] == ["job", "submit", "--address", "http://head:8265"]
    entry = cmd[cmd.index("--") + 1 :]
    assert entry[0] == os.path.abspath(args.verl_python)  # the job runs the verl environment's Python
    assert entry[1:3] == ["-m", "verl.trainer.main_ppo"]
    assert "trainer.nnodes=2" in cmd
