"""The verl backend inside verl's own environment (`make test-verl`: verl[cpu]==0.9.1 in .venv-verl).

What `make test` (tests/test_verl.py) cannot do because verl does not import there: verl's own
``validate_config`` on our overrides, its ``RLHFDataset`` on our exported parquet, its reward manager and
reward-function loader calling our ``compute_score``, and our agent loop instantiated the way verl's
agent-loop worker does it (Hydra, from the agent-loop config file the launcher writes). The LLM server is
scripted: verl's vLLM server needs a GPU (scripts/gpu_check_verl.sh runs the real thing). In the main
environment this module is skipped: verl needs ray, TransferQueue and its own torch.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

try:
    import verl  # noqa: F401
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase  # noqa: F401
except ImportError:
    pytest.skip("needs the verl environment (make venv-verl; make test-verl)", allow_module_level=True)

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf

from mathforge.errors import UserError
from mathforge.verl import export, launcher

REPO = Path(__file__).resolve().parents[1]
RECIPES = [
    REPO / "recipes/Qwen2.5-Math-1.5B/rl/config_ppo_verl.yaml",
    REPO / "recipes/Qwen2.5-Math-7B/rl/config_ppo_verl.yaml",
    REPO / "recipes/Qwen2.5-Math-1.5B/rl/config_grpo_verl.yaml",
    REPO / "recipes/tiny/rl/config_ppo_verl.yaml",
]
SOLUTION = "<step>\nx = 6 * 7\nprint(x)\n</step>\n<output>\n42\n</output>\n<answer>\nThe answer is \\boxed{42}\n</answer>\n"


def _config(recipe, tiny_model, tmp_path, **overrides):
    args, loop, reward = launcher.from_recipe(
        recipe,
        model_name_or_path=str(tiny_model),
        output_dir=str(tmp_path / "run"),
        max_prompt_length=256,
        max_completion_length=512,
        **overrides,
    )
    return args, loop, reward, launcher.compose(launcher.build_overrides(args, loop, reward))


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.parent.name}-{p.stem}")
def test_verl_validate_config_accepts_the_shipped_recipes(recipe, tiny_model, tmp_path):
    *_, config = _config(recipe, tiny_model, tmp_path)
    assert launcher.validate_with_verl(config) is True


def test_verl_validate_config_catches_what_composition_cannot(tiny_model, tmp_path):
    both = ["actor_rollout_ref.rollout.log_prob_micro_batch_size=8"]  # also set per GPU by the launcher
    *_, config = _config(RECIPES[0], tiny_model, tmp_path, verl_overrides=both)
    with pytest.raises(UserError, match="log_prob_micro_batch_size"):
        launcher.validate_with_verl(config)


def test_rlhf_dataset_reads_the_exported_parquet(tiny_model, tokenizer, tmp_path):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    data = tmp_path / "problems.jsonl"
    data.write_text(
        "".join(json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(6))
    )
    *_, config = _config(RECIPES[0], tiny_model, tmp_path)
    path = export.export(str(data), config.data.train_files)
    dataset = RLHFDataset(str(path), tokenizer, config.data)
    assert len(dataset) == 6
    row = dataset[4]
    assert row["raw_prompt"] == [{"role": "user", "content": "What is 4 + 4?"}]
    assert row["reward_model"]["ground_truth"] == "8" and row["agent_name"] == "mathforge_steps"
    assert row["extra_info"]["problem"] == "What is 4 + 4?"


def _rollout(tokenizer, text, gold, end):
    from verl import DataProto

    prompt = tokenizer.encode(
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
    )
    response = tokenizer.encode(text, add_special_tokens=False)
    return DataProto.from_dict(
        tensors={
            "prompts": torch.tensor([prompt]),
            "responses": torch.tensor([response]),
            "attention_mask": torch.ones(1, len(prompt) + len(response), dtype=torch.long),
        },
        non_tensors={
            "data_source": np.array(["mathforge/t"], dtype=object),
            "reward_model": np.array([{"ground_truth": gold}], dtype=object),
            "extra_info": np.array([{"problem": "q"}], dtype=object),
            "tool_extra_fields": np.array([{"rollout_end": end, "model_tokens": 20}], dtype=object),
        },
    )


def test_verl_reward_manager_calls_our_reward(tiny_model, tokenizer, tmp_path):
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn

    *_, config = _config(RECIPES[0], tiny_model, tmp_path)  # accuracy + format + cosine, weights 1

    async def score(*rollout):
        manager = NaiveRewardManager(config, tokenizer, get_custom_reward_fn(config))
        return await manager.run_single(_rollout(tokenizer, *rollout))

    right = asyncio.run(score(SOLUTION + "<|im_end|>", "42", "answer"))
    assert right["reward_extra_info"]["acc"] == 1.0
    assert right["reward_score"] == pytest.approx(2.0 + right["reward_extra_info"]["cosine"])
    wrong = asyncio.run(score(SOLUTION, "41", "answer"))
    assert wrong["reward_extra_info"]["acc"] == 0.0 and wrong["reward_score"] < 0.01
    cut = asyncio.run(score(SOLUTION, "42", "length"))  # a cut trajectory is unanswered, whatever it holds
    assert cut["reward_extra_info"]["acc"] == 0.0
    empty = asyncio.run(score("", "42", "invalid"))
    assert empty["reward_extra_info"]["reward_error"] == 0.0 and empty["reward_score"] < 0


def test_agent_loop_instantiated_as_verl_does(tiny_model, tokenizer, tmp_path):
    import hydra
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.workers.rollout.replica import TokenOutput

    args, loop, reward, config = _config(RECIPES[0], tiny_model, tmp_path)
    path = Path(config.actor_rollout_ref.rollout.agent.agent_loop_config_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(launcher.agent_loop_entries(loop), sort_keys=False))
    for entry in OmegaConf.load(path):  # what verl's AgentLoopWorker does with agent_loop_config_path
        _agent_loop_registry[entry.name] = entry

    class Server:
        """verl's LLM server manager, scripted (its vLLM server needs a GPU)."""

        def __init__(self, chunks):
            self.chunks, self.requests = list(chunks), []

        async def generate(self, request_id, prompt_ids, sampling_params, **kwargs):
            self.requests.append(request_id)
            return TokenOutput(token_ids=tokenizer.encode(self.chunks.pop(0), add_special_tokens=False))

    server = Server(["<step>\nx = 6 * 7\nprint(x)\n</step>", "<answer>\n\\boxed{42}\n</answer>"])

    async def run():
        agent = hydra.utils.instantiate(
            config=_agent_loop_registry["mathforge_steps"],
            trainer_config=DictConfigWrap(config),
            server_manager=server,
            tokenizer=tokenizer,
            processor=None,
            hf_model_type="qwen2",
            dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(config.data),
            tools=ToolListWrap([]),
        )
        # the recipe's step options reach the loop verl builds (through agent_loop_config_path)
        recipe_step_tokens = yaml.safe_load(RECIPES[0].read_text())["max_step_tokens"]
        assert agent.step_config.max_step_tokens == loop.max_step_tokens == recipe_step_tokens
        return await agent.run(
            {"temperature": 1.0, "logprobs": False}, raw_prompt=[{"role": "user", "content": "6*7?"}]
        )

    out = asyncio.run(run())
    assert out.extra_fields == {"rollout_end": "answer", "model_tokens": 24, "num_steps": 1, "code_errors": 0}
    assert tokenizer.decode(out.prompt_ids) == "<|im_start|>user\n6*7?<|im_end|>\n<|im_start|>assistant\n"
    response = tokenizer.decode(out.response_ids)
    # stopped at </answer>, the system ends the line and the turn: the text SFT trained on (SOLUTION + <|im_end|>)
    assert (
        response
        == "<step>\nx = 6 * 7\nprint(x)\n</step>\n<output>\n42\n</output>\n<answer>\n\\boxed{42}\n</answer>\n<|im_end|>"
    )
    sampled = [t for t, by_model in zip(out.response_ids, out.response_mask) if by_model]
    assert len(sampled) == out.extra_fields["model_tokens"]
    tensors = out.as_dict()
    assert tensors["responses"].shape == tensors["response_mask"].shape == (len(out.response_ids),)
    assert len(set(server.requests)) == 1  # one request id per trajectory (the server's prefix cache)


def test_verl_reward_manager_with_the_ppm_term(tiny_model, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn

    ppm = tmp_path / "ppm"  # a real, untrained PPM: the tiny model with a one-label head
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).save_pretrained(ppm)
    tokenizer.save_pretrained(ppm)
    options = {"reward_funcs": ["accuracy", "ppm"], "reward_weights": [1.0, 1.0], "ppm_path": str(ppm)}
    *_, config = _config(RECIPES[0], tiny_model, tmp_path, **options)
    assert config.reward.custom_reward_function.reward_kwargs.ppm_path == str(ppm)

    async def score():
        manager = NaiveRewardManager(config, tokenizer, get_custom_reward_fn(config))
        return await manager.run_single(_rollout(tokenizer, SOLUTION, "42", "answer"))

    info = asyncio.run(score())["reward_extra_info"]
    assert info["reward_error"] == 0.0 and info["acc"] == 1.0
    assert -1.0 <= info["ppm"] <= 1.0 and info["ppm"] != 0.0
    assert info["score"] == pytest.approx(1.0 + info["ppm"])


def test_the_grader_reads_percent_answers_despite_hydras_antlr():
    """Hydra pins antlr4 4.9 here, with which math-verify read `50\\%` as something else than 50 (a correct percent
    answer scored 0); the grader's workers import the 4.13.2 runtime installed beside this environment."""
    from importlib.metadata import version

    from mathforge.grader import Grader, worker_path
    from mathforge.verl.reward import compute_score

    assert version("antlr4-python3-runtime").startswith("4.9") and worker_path() is not None
    with Grader(timeout=10) as grader:
        assert grader.grade(r"The answer is \boxed{50\%}", "50") is True
    solution = SOLUTION.replace("\\boxed{42}", "\\boxed{50\\%}")
    assert compute_score("toy", solution, "50")["acc"] == 1.0
