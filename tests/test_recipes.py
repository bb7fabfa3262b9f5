"""The GPU recipes (recipes/Qwen2.5-Math-*, recipes/DeepSeek-R1-Distill-Qwen-1.5B) against the run they belong to.

Every stand-alone stage recipe prompts as its evolve.yaml does (the step format's system prompt), its default
paths are those `mathforge evolve` gives the same step (read from evolve's own plan, not re-typed here), and
its lengths fit Qwen2.5-Math's context. Nothing is downloaded: planning touches no model or dataset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mathforge.config import load_yaml
from mathforge.evolve import EvolveConfig, Plan, parse_args, stage_types
from mathforge.steps import SYSTEM_PROMPT

REPO = Path(__file__).resolve().parents[1]
QWEN_MODELS = ["Qwen2.5-Math-1.5B", "Qwen2.5-Math-7B"]
GPU_MODELS = [*QWEN_MODELS, "DeepSeek-R1-Distill-Qwen-1.5B"]
STAGE_RECIPES = sorted(
    str(p.relative_to(REPO)) for model in GPU_MODELS for p in (REPO / "recipes" / model).glob("*/*.yaml")
)
QWEN_RECIPES = [r for r in STAGE_RECIPES if r.split("/")[1] in QWEN_MODELS]

# Qwen2.5-Math-1.5B's and -7B's config.json on the Hub: "max_position_embeddings": 4096.
CONTEXT = 4096
# TRL 1.16's GRPOConfig has no max_prompt_length: a TRL recipe leaves this much of the context to the prompt
# (system prompt + problem), as the verl recipes do with their max_prompt_length.
PROMPT_ROOM = 1024

# stand-alone recipe -> the step of evolve.yaml whose defaults it carries, and the keys evolve sets there
EVOLVE_STEP = {
    "search/config_rstar.yaml": (
        "round 1, step search",
        ("model_name_or_path", "ppm_path", "dataset_name", "dataset_split", "output_file"),
    ),
    "sft/config_rstar.yaml": ("round 1, step sft", ("model_name_or_path", "dataset_name", "output_dir")),
    "ppm/config_rstar.yaml": ("round 1, step ppm", ("model_name_or_path", "dataset_name", "output_dir")),
    "eval/config_rstar.yaml": ("round 1, step eval_greedy", ("model_name_or_path", "output_dir")),
    "rl/config_fastmath.yaml": ("stage 2, step train", ("model_name_or_path", "output_dir")),
    # verl recipes cannot run inside evolve (its RL step is TRL's): same policy, their own folder in rl/
    "rl/config_ppo_verl.yaml": ("stage 2, step train", ("model_name_or_path",)),
    "rl/config_grpo_verl.yaml": ("stage 2, step train", ("model_name_or_path",)),
}


def option_types(stage: str, recipe: dict) -> list[type]:
    """The option dataclasses the recipe's command parses."""
    if stage == "rl" and recipe.get("backend") == "verl":
        from mathforge.rewards import RewardArguments
        from mathforge.verl.agent_loop import StepLoopConfig
        from mathforge.verl.launcher import VerlArguments

        return [VerlArguments, StepLoopConfig, RewardArguments]
    return stage_types(stage, recipe)  # a stage that cannot be imported: UserError


def settings(stage: str, recipe: dict) -> dict:
    """The recipe's values over its options' defaults (without the GPU checks of TRL's configs)."""
    values = {}
    for cls in option_types(stage, recipe):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                values.setdefault(f.name, f.default)
            elif f.default_factory is not dataclasses.MISSING:
                values.setdefault(f.name, f.default_factory())
    unknown = set(recipe) - set(values) - {"env"}
    assert not unknown, f"keys that are no option of {stage}: {sorted(unknown)}"
    return {**values, **recipe}


def writes_steps(stage: str, values: dict) -> bool:
    """Whether the stage's prompts ask for the step format."""
    if stage == "eval":
        return values["prompt_format"] == "steps"
    if stage == "rl":
        return values["rollout_format"] == "steps"
    return stage in ("search", "sft")


def context_overflows(stage: str, values: dict) -> list[str]:
    """The lengths of a stage's settings that do not fit CONTEXT positions (empty: all fit)."""
    out = []

    def need(fits: bool, what: str) -> None:
        if not fits:
            out.append(what)

    if stage == "search":
        n = values["max_new_tokens"] * values["max_depth"]
        need(n <= CONTEXT, f"max_new_tokens x max_depth = {n}")
    elif stage == "eval":
        if values["prompt_format"] == "steps":
            n = values["max_new_tokens"] * values["max_steps"]
            need(n <= CONTEXT, f"max_new_tokens x max_steps = {n}")
        else:
            need(values["max_new_tokens"] <= CONTEXT, f"max_new_tokens = {values['max_new_tokens']}")
        need(max(values["token_budgets"]) <= CONTEXT, f"token_budgets up to {max(values['token_budgets'])}")
        need((values["max_model_len"] or 0) <= CONTEXT, f"max_model_len = {values['max_model_len']}")
    elif stage in ("sft", "ppm"):
        need(
            values["max_length"] is not None and values["max_length"] <= CONTEXT,
            f"max_length = {values['max_length']}",
        )
    elif stage == "rl":
        prompt = values.get("max_prompt_length", PROMPT_ROOM)
        n = prompt + values["max_completion_length"]
        need(n <= CONTEXT, f"prompt {prompt} + max_completion_length {values['max_completion_length']} = {n}")
        if values["rollout_format"] == "steps":
            n = values["max_step_tokens"] * values["max_solution_steps"]
            need(n <= CONTEXT, f"max_step_tokens x max_solution_steps = {n}")
            need(
                values["max_step_tokens"] <= values["max_completion_length"],
                "max_step_tokens > max_completion_length",
            )
        need((values.get("vllm_max_model_length") or 0) <= CONTEXT, "vllm_max_model_length")
    return out


@pytest.fixture(scope="module")
def plans() -> dict[str, Plan]:
    """evolve's plan of each Qwen2.5-Math evolve.yaml (paths relative to the repository, as a user runs it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        return {m: Plan(parse_args(["--config", f"recipes/{m}/evolve.yaml"])) for m in QWEN_MODELS}


def step_of(plan: Plan, label: str):
    (step,) = [s for s in plan.steps if s.label == label]
    return step


# --- the system prompt ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", STAGE_RECIPES)
def test_stage_recipes_prompt_as_their_run(recipe):
    stage = recipe.split("/")[2]
    raw = load_yaml(REPO / recipe)
    values = settings(stage, raw)
    if "system_prompt" not in values:  # ppm: its pairs carry the prompt the search wrote
        assert stage == "ppm"
        return
    if writes_steps(stage, values):
        assert values["system_prompt"] == SYSTEM_PROMPT, recipe
    else:  # R1 distills think in plain text: the step format's instructions would contradict that
        assert values["system_prompt"] is None, recipe


@pytest.mark.parametrize("model", QWEN_MODELS)
def test_evolve_prompts_every_step_with_the_step_system_prompt(model, plans):
    overrides = load_yaml(REPO / f"recipes/{model}/evolve.yaml")["overrides"]
    assert {stage: o["system_prompt"] for stage, o in overrides.items()} == dict.fromkeys(
        ("search", "eval", "rl"), SYSTEM_PROMPT
    )
    prompted = set()
    for step in plans[model].steps:
        if step.stage == "extract":  # None: the prompt each tree was searched with
            assert step.recipe.get("system_prompt") is None
        elif "system_prompt" in settings(step.stage, step.recipe):
            assert step.recipe.get("system_prompt") == SYSTEM_PROMPT, step.label
            prompted.add(step.stage)
    assert prompted == {"search", "sft", "eval", "rl"}


# --- default paths -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", QWEN_MODELS)
def test_stand_alone_paths_are_evolves(model, plans):
    plan = plans[model]
    assert plan.config.name == model.lower()
    folder = REPO / "recipes" / model
    recipes = {str(p.relative_to(folder)) for p in folder.glob("*/*.yaml")}
    assert recipes <= set(EVOLVE_STEP), f"no evolve step known for {sorted(recipes - set(EVOLVE_STEP))}"
    for name in sorted(recipes):
        label, keys = EVOLVE_STEP[name]
        step = step_of(plan, label)
        recipe = load_yaml(folder / name)
        for key in keys:
            assert recipe.get(key) == step.recipe.get(key), (model, name, key)
        if "verl" in name:
            out = Path(recipe["output_dir"])
            assert out.parent == step.out.parent and out != step.out, (model, name)


def test_r1_distill_paths_are_evolves():
    """No evolve.yaml for the R1 distill (stage 2 only): its recipe as evolve's rl_recipe gives the same paths."""
    recipe_path = REPO / "recipes/DeepSeek-R1-Distill-Qwen-1.5B/rl/config_fastmath.yaml"
    config = EvolveConfig(
        name="deepseek-r1-distill-qwen-1.5b",
        base_model="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        rl_recipe=str(recipe_path),
    )
    step = step_of(Plan(config), "stage 2, step train")
    recipe = load_yaml(recipe_path)
    assert (recipe["model_name_or_path"], recipe["output_dir"]) == (
        step.recipe["model_name_or_path"],
        str(step.out),
    )


# --- lengths -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", QWEN_RECIPES)
def test_qwen_recipes_fit_the_context(recipe):
    stage = recipe.split("/")[2]
    assert context_overflows(stage, settings(stage, load_yaml(REPO / recipe))) == []


@pytest.mark.parametrize("model", QWEN_MODELS)
def test_evolve_steps_fit_the_context(model, plans):
    for step in plans[model].steps:
        if step.stage != "extract":
            assert context_overflows(step.stage, settings(step.stage, step.recipe)) == [], step.label


def test_the_length_check_names_what_overflows():
    search = settings("search", {"max_new_tokens": 1024, "max_depth": 16})
    rl = settings("rl", {"max_step_tokens": 512, "max_solution_steps": 16, "max_completion_length": 3072})
    assert context_overflows("search", search) == ["max_new_tokens x max_depth = 16384"]
    assert context_overflows("rl", rl) == ["max_step_tokens x max_solution_steps = 8192"]
    assert context_overflows(
        "eval", settings("eval", {"max_new_tokens": 256, "token_budgets": [1024, 8192]})
    ) == ["token_budgets up to 8192"]
