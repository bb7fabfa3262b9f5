"""Stage-2 RL on CPU with TRL: real GRPO and RLOO runs of a tiny policy, executor-in-the-loop rollouts, resume.

The policy is the tiny model after a short SFT on toy teacher solutions (conftest's `sft_policy`), enough for
it to write steps whose code the executor runs during the rollouts.
"""

import json
import re
from pathlib import Path

import pytest
import yaml
from fake_hub import fake_hub
from weights import weights_moved

from mathforge import steps

REPO = Path(__file__).resolve().parents[1]
ALL_REWARDS = ["accuracy", "format", "cosine", "kimi_length", "soft_overlong"]
REWARD_ARGS = ["--reward_funcs", *ALL_REWARDS, "--reward_weights", "1", "1", "1", "1", "0.5"]


def rl_args(model, data, out, *extra):
    return [
        "--config", str(REPO / "recipes/tiny/rl/config_toy.yaml"),
        "--model_name_or_path", str(model),
        "--dataset_name", str(data),
        "--output_dir", str(out),
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--num_generations", "4",
        "--num_iterations", "1",  # the recipe's 2 would reuse step 1's rollouts: every step here generates
        "--logging_steps", "1", "--save_steps", "2", "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def grpo_run(sft_policy, toy_data, tmp_path_factory):
    from mathforge.rl import main

    out = tmp_path_factory.mktemp("rl") / "grpo"
    trainer = main(rl_args(sft_policy, toy_data, out, *REWARD_ARGS))
    return out, trainer


def _completion_texts(trainer) -> list[str]:
    from mathforge.rewards import completion_text
    from mathforge.trl_compat import logged_completions

    return [completion_text(c) for c in logged_completions(trainer)]


@pytest.mark.slow
def test_grpo_logs_each_reward_moves_the_weights_and_saves(grpo_run, sft_policy):
    out, trainer = grpo_run
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for name in ALL_REWARDS:
        assert all(f"rewards/{name}/mean" in h for h in logs), name
    assert all(h["rollout/steps"] > 0 for h in logs)  # the policy writes steps; they were executed
    for name in ("model.safetensors", "tokenizer.json", "recipe.yaml", "README.md", "checkpoint-2"):
        assert (out / name).exists(), name
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["reward_funcs"] == ALL_REWARDS and recipe["algorithm"] == "grpo" and recipe["beta"] == 0.04
    # every weight moved, and only the gradient moves one (no weight decay): a zeroed gradient would fail here
    assert trainer.args.weight_decay == 0
    moved = weights_moved(sft_policy, out)
    assert len(moved) > 10 and all(moved.values()), [name for name, m in moved.items() if not m]


@pytest.mark.slow
def test_rollout_outputs_come_from_the_executor(grpo_run):
    from mathforge.executor import run_program

    _, trainer = grpo_run
    checked = 0
    for text in _completion_texts(trainer):
        # the text holds the model's chunks as written, each executed step followed by its <output> block;
        # the model never opens one itself (generation stops at "<output>"; a broken last chunk ending in it
        # is kept for the loss, and may hold any other tags)
        body = text.strip().removesuffix(steps.OUTPUT_OPEN)
        starts = [m.start() for m in re.finditer(re.escape(steps.OUTPUT_OPEN), body)]
        if not starts:
            continue
        codes = [s.code for s in steps.parse_completion(body[: starts[-1]]).steps]
        assert len(codes) == len(starts)
        for start, code, result in zip(starts, codes, run_program(codes)):
            real = steps.output_block(steps.Step(code, result.stdout, result.error)).strip()
            assert body.startswith(real, start)  # every <output> block is what the code really printed
        checked += 1
    assert checked > 0


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(grpo_run, sft_policy, toy_data, capsys):
    from mathforge.rl import main

    out, _ = grpo_run
    trainer = main(rl_args(sft_policy, toy_data, out, *REWARD_ARGS, "--max_steps", "3"))
    assert "resuming from" in capsys.readouterr().out and "checkpoint-2" in json.dumps(
        json.loads((out / "ranks" / "rank_0.json").read_text())
    )
    assert trainer.state.global_step == 3


@pytest.mark.slow
def test_rloo_with_step_rollouts(sft_policy, toy_data, tmp_path, monkeypatch):
    from mathforge.rl import main

    hub = fake_hub(monkeypatch, tmp_path)  # push_to_hub goes through mathforge.push, checked here too

    args = [
        "--algorithm", "rloo", "--model_name_or_path", str(sft_policy), "--dataset_name", str(toy_data),
        "--output_dir", str(tmp_path / "rloo"), "--reward_funcs", "accuracy", "format", "cosine",
        "--cosine_max_len", "400", "--max_steps", "1", "--per_device_train_batch_size", "8",
        "--num_generations", "4", "--max_step_tokens", "96", "--max_solution_steps", "8",
        "--max_completion_length", "512", "--logging_steps", "1", "--use_cpu", "true", "--report_to", "none",
        "--gradient_checkpointing", "false", "--save_strategy", "no", "--disable_tqdm", "true",
        "--push_to_hub", "true", "--hub_model_id", "me/tiny-rloo", "--hub_token", "hf_fake",
    ]  # fmt: skip
    trainer = main(args)
    (log,) = [h for h in trainer.state.log_history if "loss" in h]
    assert {"rewards/accuracy/mean", "rewards/format/mean", "rewards/cosine/mean", "rollout/steps"} <= set(
        log
    )
    assert type(trainer).__name__ == "StepRLOOTrainer" and log["rollout/steps"] > 0
    assert hub.calls[0] == ("create_repo", "me/tiny-rloo", "model", True)
    assert {"model.safetensors", "README.md", "recipes/recipe.yaml"} <= hub.calls[1][3]
    assert trainer.args.weight_decay == 0 and all(weights_moved(sft_policy, tmp_path / "rloo").values())


class ScriptedGenerator:
    """Plays a fixed script per prompt: chunk i is returned after i executed steps. A stand-in for a model
    where the test needs chunks no tiny model writes on demand; ids in, sampled ids out, like a backend."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]]):
        self.tokenizer, self.scripts = tokenizer, scripts
        self.seen: list[str] = []

    def generate(self, prompts, sampling):
        from mathforge.generation import completion_from_ids

        out = []
        for ids in prompts:
            prompt = self.tokenizer.decode(ids)
            self.seen.append(prompt)
            script = next(s for key, s in self.scripts.items() if key in prompt)
            chunk = self.tokenizer(script[prompt.count(steps.OUTPUT_OPEN)], add_special_tokens=False)[
                "input_ids"
            ]
            out.append([completion_from_ids(self.tokenizer, chunk, set(), sampling.stop)])
        return out


def test_step_rollout_masks_executor_tokens(tiny_model):
    from transformers import AutoTokenizer

    from mathforge.executor import Executor
    from mathforge.generation import SamplingConfig
    from mathforge.rl import RLScriptArguments, StepRollout
    from mathforge.rollout import Trajectory, rollout

    tok = AutoTokenizer.from_pretrained(tiny_model)
    generator = ScriptedGenerator(
        tok,
        {
            "six": ["<step>\nx = 6 * 7\nprint(x)\n</step>", "<step>\nprint(x + 1)\n</step>", "<answer>\nThe answer is \\boxed{43}\n</answer>"],
            "fake": ["<step>\nprint(1)\n</step>", "<output>"],  # then tries to write an output block itself
        },
    )  # fmt: skip
    prompts = [steps.chat_prompt(tok, "six times seven plus one"), steps.chat_prompt(tok, "fake it")]
    with Executor() as executor:
        (a,), (b,) = rollout(prompts, generator, executor, SamplingConfig(n=1), max_steps=8)
    encoder = StepRollout(RLScriptArguments(), tok, max_completion_length=1000)
    ids, mask = encoder.encode(a)
    # mask 0: what the system added (newline after a closing tag, output blocks, end of turn)
    executed = "\n<output>\n42\n</output>\n\n<output>\n43\n</output>\n\n<|im_end|>"
    assert tok.decode([i for i, m in zip(ids, mask) if m == 0]) == executed
    written = tok.decode([i for i, m in zip(ids, mask) if m == 1])
    assert written == "".join(generator.scripts["six"])  # exactly the chunks the model generated
    assert tok.decode(ids) == a.completion + "<|im_end|>" and a.end == "answer"

    # the faked output block is not part of the solution, but it is the model's text: kept as written
    # tokens (so the loss can push it down); no end-of-turn: not finished
    ids, mask = encoder.encode(b)
    assert b.end == "invalid" and b.steps[0].output == "1\n" and b.last_chunk == "<output>"
    assert tok.decode(ids) == b.completion == "<step>\nprint(1)\n</step>\n<output>\n1\n</output>\n<output>"
    assert tok.decode([i for i, m in zip(ids, mask) if m == 1]) == "<step>\nprint(1)\n</step><output>"
    assert encoder.encode(Trajectory("p", [], end="invalid")) == ([encoder.pad_id], [0])
    short_ids, short_mask = StepRollout(RLScriptArguments(), tok, max_completion_length=5).encode(a)
    assert len(short_ids) == len(short_mask) == 5


def test_rl_trains_on_the_chunks_as_generated_not_re_rendered(tiny_model):
    # a chunk out of canonical form (no newline before a closing tag) re-rendered would gain a newline the
    # model never sampled, which GRPO then pushes on forever (seen: log-prob -27, KL 1e5): the model
    # continues, and RL trains on, exactly the text it wrote
    from transformers import AutoTokenizer

    from mathforge.executor import Executor
    from mathforge.generation import SamplingConfig
    from mathforge.rl import RLScriptArguments, StepRollout
    from mathforge.rollout import rollout

    tok = AutoTokenizer.from_pretrained(tiny_model)
    chunks = ["<step>\nprint(5)</step>", "<answer>\nThe answer is \\boxed{</answer>"]
    generator = ScriptedGenerator(tok, {"odd": chunks})
    prompt = steps.chat_prompt(tok, "odd one")
    with Executor() as executor:
        ((t,),) = rollout([prompt], generator, executor, SamplingConfig(n=1), max_steps=8)
    assert t.end == "answer" and t.answer == "The answer is \\boxed{"
    assert [s.text for s in t.segments if s.by_model] == chunks
    seen = generator.seen
    assert (
        seen[1] == prompt + "<step>\nprint(5)</step>\n<output>\n5\n</output>\n"
    )  # its own text, then the output
    assert t.completion == seen[1][len(prompt) :] + chunks[1] + "\n"  # as written, for every reader
    ids, mask = StepRollout(RLScriptArguments(), tok, max_completion_length=1000).encode(t)
    assert tok.decode([i for i, m in zip(ids, mask) if m == 1]) == "".join(chunks)
    assert tok.decode(ids) == seen[1][len(prompt) :] + chunks[1] + "\n<|im_end|>"


def test_bad_inputs_are_one_line_errors(tmp_path, tiny_model, toy_data, capsys):
    from mathforge.cli import run_main
    from mathforge.rl import main

    typo = tmp_path / "typo.yaml"
    typo.write_text("reward_func: [accuracy]\n")
    rloo = tmp_path / "rloo.yaml"
    rloo.write_text("algorithm: rloo\nloss_type: dapo\n")
    base = [
        "--model_name_or_path", str(tiny_model), "--dataset_name", str(toy_data), "--output_dir", str(tmp_path / "o"),
        "--use_cpu", "true",
    ]  # fmt: skip
    cases = [
        (["--config", str(typo)], "did you mean 'reward_funcs'"),
        (["--config", str(rloo)], "unknown key 'loss_type'"),
        ([*base, "--algorithm", "ppo"], "algorithm must be one of grpo, rloo"),
        ([*base, "--reward_funcs", "acuracy"], "unknown reward 'acuracy'"),
        (
            [*base, "--reward_funcs", "accuracy", "format", "--reward_weights", "1"],
            "reward_weights has 1 values",
        ),
        ([*base, "--reward_funcs", "ppm"], "ppm_path"),
        ([*base, "--length_unit", "words"], "length_unit must be one of"),
        (
            [
                "--model_name_or_path",
                "/nonexistent/model",
                "--dataset_name",
                str(toy_data),
                "--use_cpu",
                "true",
            ],
            "model folder not found",
        ),
        (["--model_name_or_path", str(tiny_model), "--use_cpu", "true"], "no training data"),
        (
            [*base, "--reward_funcs", "ai_feedback", "--judge_base_url", "http://127.0.0.1:9/v1"],
            "unreachable",
        ),
    ]
    for argv, message in cases:
        assert run_main(main, argv, "mathforge rl") == 2, argv
        err = capsys.readouterr().err.strip().splitlines()  # (data loading may draw progress bars first)
        errors = [line for line in err if "error" in line]
        assert errors == [err[-1]] and err[-1].startswith("mathforge rl: error:"), (argv, err)
        assert message in err[-1], (argv, err)


TRL_RECIPES = [
    p for p in REPO.glob("recipes/*/rl/*.yaml") if yaml.safe_load(p.read_text()).get("backend") != "verl"
]


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(REPO)) for p in TRL_RECIPES))  # verl's: test_verl
def test_rl_recipes_parse(recipe):
    from trl import ModelConfig

    from mathforge.config import parse_config
    from mathforge.rewards import RewardArguments
    from mathforge.rl import ALGORITHMS, RLScriptArguments, _algorithm

    argv = ["--config", str(REPO / recipe)]
    if "tiny" not in recipe:
        argv += ["--bf16", "false"]  # GPU recipes: bf16 is refused on a CPU-only machine
    script, rewards, training, _ = parse_config(
        [RLScriptArguments, RewardArguments, ALGORITHMS[_algorithm(argv)], ModelConfig], argv
    )
    assert len(training.reward_weights) == len(script.reward_funcs)
    local = training.per_device_train_batch_size * training.steps_per_generation
    assert local % training.num_generations == 0  # whole groups on each process
    if "tiny" not in recipe:  # the two-stage paper's settings
        assert (training.max_steps, training.learning_rate, training.beta, training.num_generations) == (
            40,
            4e-6,
            0.04,
            8,
        )
        assert script.reward_funcs == ["format", "cosine", "kimi_length"]


def test_private_trl_members_are_checked_in_one_place():
    import trl

    from mathforge import trl_compat

    trl_compat.check()  # the installed TRL has every private method mathforge overrides
    with pytest.raises(
        trl_compat.TRLVersionError, match=f"TRL {trl.__version__} has no .*install trl>=1.16,<1.17"
    ):
        trl_compat.private(object(), "_last_loaded_step")
