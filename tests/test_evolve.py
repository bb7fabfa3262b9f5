"""`mathforge evolve`: the plan, bad configs, a real micro run, and a run killed twice then resumed.

The runs are real (micro model, TRL trainers, sandboxed executor, transformers generator) with tiny
step counts; see evolve_helpers.py. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from evolve_helpers import REPO, finished_run, micro_config, write_config

from mathforge.errors import UserError
from mathforge.evolve import EvolveConfig, Plan, Step, _changed_keys, evolve, parse_args


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "micro-evolve"  # shared with test_push.py in one session


RL_RECIPE = str(REPO / "recipes/tiny/rl/config_toy.yaml")


def plan_of(tmp_path, **changes) -> Plan:
    path = write_config(micro_config(tmp_path / "runs", **changes), tmp_path / "c.yaml")
    return Plan(parse_args(["--config", str(path)]))


# --- the plan and bad configs (nothing trains) ----------------------------------------------------------


def test_plan_order_wiring_and_folders(tmp_path):
    rounds = [{"num_rollouts": 4, "num_candidates": 3}, {"num_rollouts": 8, "num_candidates": 5}]
    plan = plan_of(
        tmp_path, rounds=rounds, sft_init="base", rl_recipe=str(REPO / "recipes/tiny/rl/config_toy.yaml")
    )
    labels = [s.label for s in plan.steps]
    per_round = ["search", "extract", "sft", "ppm", "eval_greedy", "eval_search"]
    assert labels == (
        [f"round 0, step {s}" for s in ("base_model", "toy", "sft", "eval_greedy")]
        + [f"round 1, step {s}" for s in per_round]
        + [f"round 2, step {s}" for s in per_round]
        + ["stage 2, step train", "stage 2, step eval_greedy"]
    )
    steps = {s.label: s for s in plan.steps}
    run = tmp_path / "runs" / "micro"
    assert steps["round 1, step search"].out == run / "round_1" / "search"
    assert steps["stage 2, step train"].out == run / "rl" / "train"
    s1, s2 = steps["round 1, step search"].recipe, steps["round 2, step search"].recipe
    assert (
        s1["model_name_or_path"] == str(run / "round_0" / "sft") and s1["ppm_path"] is None
    )  # round 1: no PPM
    assert s2["model_name_or_path"] == str(run / "round_1" / "sft") and s2["ppm_path"] == str(
        run / "round_1" / "ppm"
    )
    assert (s1["num_rollouts"], s2["num_rollouts"], s2["num_candidates"]) == (4, 8, 5)
    assert s1["output_file"] == str(run / "round_1" / "search" / "trees.jsonl")
    # sft_init base: every round re-fine-tunes the base model (rStar-Math) on its own round's data
    sft2 = steps["round 2, step sft"].recipe
    assert sft2["model_name_or_path"] == str(run / "round_0" / "base_model")
    assert sft2["dataset_name"] == str(run / "round_2" / "extract" / "sft")
    assert steps["round 2, step ppm"].recipe["model_name_or_path"] == str(run / "round_2" / "sft")
    assert steps["round 2, step eval_search"].recipe["ppm_path"] == str(run / "round_2" / "ppm")
    assert steps["stage 2, step train"].recipe["model_name_or_path"] == str(run / "round_2" / "sft")
    # the eval is wired to the toy test split, greedy; the recipe's benchmarks are switched off
    greedy = steps["round 1, step eval_greedy"].recipe
    assert (greedy["dataset_split"], greedy["temperature"], greedy["benchmarks"]) == ("test", 0.0, None)
    plan.validate()  # every key of every step recipe is an option of its stage


def test_sft_data_all_rounds_trains_each_round_on_every_rounds_solutions_so_far(tmp_path):
    rounds = [{"num_rollouts": 4}, {"num_rollouts": 4}, {"num_rollouts": 4}]
    plan = plan_of(tmp_path, rounds=rounds, sft_data="all_rounds")
    steps = {s.label: s for s in plan.steps}
    run = tmp_path / "runs" / "micro"
    assert steps["round 1, step sft"].recipe["dataset_name"] == str(run / "round_1" / "extract" / "sft")
    assert steps["round 1, step sft"].prepare is None
    for k in (2, 3):
        assert steps[f"round {k}, step sft"].recipe["dataset_name"] == str(run / f"round_{k}" / "sft_data")
    for k in (1, 2, 3):  # what the rounds' extractions would write; the last one without a final newline
        path = run / f"round_{k}" / "extract" / "sft" / "train.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text(f'{{"id": "a{k}"}}\n{{"id": "b{k}"}}' + ("\n" if k < 3 else ""))
    steps["round 3, step sft"].prepare()
    rows = (run / "round_3" / "sft_data" / "train.jsonl").read_text().splitlines()
    assert [json.loads(r)["id"] for r in rows] == ["a1", "b1", "a2", "b2", "a3", "b3"]
    steps["round 2, step sft"].prepare()
    assert len((run / "round_2" / "sft_data" / "train.jsonl").read_text().splitlines()) == 4
    from mathforge.evolve_report import collect

    rows = collect(run, plan)["rounds"]  # the report counts what each SFT trained on
    assert [r["sft_examples"] for r in rows[1:]] == [2, 4, 6]
    # the default: each round's own set
    plan = plan_of(tmp_path / "default", rounds=rounds)
    assert (
        {s.label: s for s in plan.steps}["round 3, step sft"]
        .recipe["dataset_name"]
        .endswith("round_3/extract/sft")
    )


def test_output_paths_cannot_be_overridden_and_placeholders_resolve(tmp_path):
    overrides = micro_config(tmp_path)["overrides"]
    overrides["sft"]["output_dir"] = "/elsewhere"
    overrides["eval"]["output_dir"] = "/elsewhere"
    overrides["ppm"]["dataset_test_split"] = "{data}"
    plan = plan_of(tmp_path, overrides=overrides)
    steps = {s.label: s for s in plan.steps}
    assert steps["round 1, step sft"].recipe["output_dir"].endswith("round_1/sft")
    assert steps["round 0, step eval_greedy"].recipe["output_dir"].endswith("round_0/eval_greedy")
    assert steps["round 1, step ppm"].recipe["dataset_test_split"] == str(
        tmp_path / "runs" / "micro" / "round_0" / "toy"
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"tiny_model": None}, "round 0, step base_model: no model"),
        (
            {"tiny_model": None, "base_model": "/no/such/model"},
            "round 0, step base_model: model folder not found",
        ),
        ({"accelerate": {"sfft": "accelerate_configs/cpu_2proc.yaml"}}, "unknown stage 'sfft' in accelerate"),
        ({"overrides": {"serch": {}}}, "unknown stage 'serch' in overrides"),
        ({"rounds": [{"num_rollouts": 4}, {"rollouts": 8}]}, "round 2: unknown key 'rollouts'"),
        ({"search_recipe": "recipes/none.yaml"}, "config file not found: recipes/none.yaml"),
        ({"ppm_recipe": None}, "round 1, step ppm: no ppm_recipe"),
        ({"bootstrap": {"max_stepz": 3}}, "round 0, step sft: unknown key 'max_stepz'"),
        ({"rounds": [{"num_rollouts": 4, "ppm": {"lr": 1}}]}, "round 1, step ppm: unknown key 'lr'"),
        ({"threads": {"serch": 1}}, "unknown stage 'serch' in threads"),
        (
            {"subprocess": ["search"], "threads": {"search": 0}},
            "threads of search must be a whole number >= 1",
        ),
        ({"threads": {"search": 1}}, "threads of search: the stage runs inside evolve's process"),
        (
            {"overrides": {"sft": {"learning_rat": 1e-4}}},
            "round 0, step sft: unknown key 'learning_rat' for `mathforge sft`; did you mean 'learning_rate'?",
        ),
        (
            {"tiny_model": {"sise": "micro"}},
            "round 0, step base_model: unknown key 'sise' for `mathforge tiny-model`; did you mean 'size'?",
        ),
        ({"toy_data": {"n_trains": 8}}, "round 0, step toy: unknown key 'n_trains' for `mathforge data toy`"),
        ({"eval_search": {"serch": "best_of_n"}}, "round 1, step eval_search: unknown key 'serch'"),
        ({"rounds": [{"extract": {"min_qq": 0.1}}]}, "round 1, step extract: unknown key 'min_qq'"),
        ({"rounds": [{"eval_search": "no"}]}, "round 1: eval_search is true or false, not 'no'"),
        # the RLOO switch picks the TRL config the keys are checked against: RLOOConfig has no loss_type
        # (the tiny GRPO recipe sets it), GRPOConfig no normalize_advantages
        (
            {"rl_recipe": RL_RECIPE, "overrides": {"rl": {"algorithm": "rloo"}}},
            "stage 2, step train: unknown key 'loss_type'",
        ),
        (
            {"rl_recipe": RL_RECIPE, "overrides": {"rl": {"normalize_advantages": True}}},
            "stage 2, step train: unknown key 'normalize_advantages' for `mathforge rl`",
        ),
        (
            {"rl_recipe": RL_RECIPE, "overrides": {"rl": {"algorithm": "ppo"}}},
            "stage 2, step train: algorithm must be one of grpo, rloo, not 'ppo'",
        ),
    ],
)
def test_bad_config_is_one_line_naming_round_and_step(tmp_path, changes, message):
    with pytest.raises(UserError, match=re.escape(message)) as err:
        plan_of(tmp_path, **changes).validate()
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_rloo_recipe_is_checked_against_rloo_config(tmp_path):
    overrides = {"rl": {"algorithm": "rloo", "normalize_advantages": True}}
    rl = tmp_path / "rloo.yaml"
    recipe = yaml.safe_load(Path(RL_RECIPE).read_text())
    rl.write_text(
        yaml.safe_dump({k: v for k, v in recipe.items() if k not in ("loss_type", "scale_rewards")})
    )
    plan = plan_of(
        tmp_path, rl_recipe=str(rl), overrides={**micro_config(tmp_path)["overrides"], **overrides}
    )
    plan.validate()
    assert plan.steps[-2].recipe["normalize_advantages"] is True


def test_a_stage_that_cannot_be_imported_is_an_error_not_a_skipped_check(tmp_path, monkeypatch):
    """A broken install of one stage (its module made unimportable here) stops the plan with one line."""
    plan = plan_of(tmp_path)
    monkeypatch.setitem(sys.modules, "mathforge.ppm", None)  # `import mathforge.ppm` raises ImportError
    with pytest.raises(UserError, match=re.escape("round 1, step ppm: `mathforge ppm` cannot be imported")):
        plan.validate()


def test_a_finished_steps_recipe_compares_paths_as_paths_and_text_as_text(tmp_path, monkeypatch):
    """The same path written with ``~``, relative or in a run moved elsewhere is no change; a multi-line
    prompt with ``/`` in it is text, so a change in it is one."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    planned = {
        "model_name_or_path": str(tmp_path / "home" / "base"),
        "dataset_name": str(tmp_path / "runs" / "x" / "round_1" / "extract" / "sft"),
        "output_dir": str(tmp_path / "runs" / "x" / "round_1" / "sft"),
        "trees": [str(tmp_path / "runs" / "x" / "round_1" / "search" / "trees.jsonl")],
        "system_prompt": "Solve step by step.\nWrite fractions as a/b/c.",
        "learning_rate": 1e-4,
    }
    saved = {
        "model_name_or_path": "~/base",
        "dataset_name": "runs/x/round_1/extract/sft",
        "output_dir": "/elsewhere/runs/x/round_1/sft",
        "trees": ["/elsewhere/runs/x/round_1/search/trees.jsonl"],
        "system_prompt": "Solve briefly.\nWrite fractions as a/b/c.",
        "learning_rate": 1e-4,
    }
    step = Step("round 1", "sft", "sft", tmp_path / "step", planned, lambda: True)
    step.out.mkdir()
    (step.out / "step_recipe.yaml").write_text(yaml.safe_dump(saved))
    assert _changed_keys(step) == ["system_prompt"]
    saved["learning_rate"] = 1e-5
    (step.out / "step_recipe.yaml").write_text(yaml.safe_dump(saved))
    assert _changed_keys(step) == ["learning_rate", "system_prompt"]


def test_threads_set_omp_num_threads_of_a_stage_process(tmp_path, monkeypatch):
    """`threads` reaches the stage's process as OMP_NUM_THREADS and is written into step_command.sh. The
    stage command is replaced by a real Python process that prints its environment (no stage runs)."""
    import mathforge.evolve as evolve_module

    plan = plan_of(tmp_path, subprocess=["search"], threads={"search": 1})
    step = next(s for s in plan.steps if s.label == "round 1, step search")
    probe = [sys.executable, "-c", "import os; print('threads:', os.environ['OMP_NUM_THREADS'])"]
    monkeypatch.setattr(evolve_module, "command", lambda step, config, nodes: probe)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    evolve_module.run_step(step, plan.config)
    assert "threads: 1" in (step.out / "step.log").read_text()
    assert (step.out / "step_command.sh").read_text().startswith("OMP_NUM_THREADS=1 ")
    other = next(s for s in plan.steps if s.label == "round 1, step eval_greedy")
    evolve_module.run_step(other, plan.config)  # a stage without threads keeps the caller's
    assert "threads: 2" in (other.out / "step.log").read_text()


@pytest.mark.slow
def test_a_launched_stage_fails_with_its_ranks_error_not_the_launchers(tmp_path):
    """A stage launched with accelerate on 2 processes fails (the model it starts from is not there): the step's one line
    is the ranks' own error, not torchrun's ChildFailedError summary printed after it; of a log holding
    several attempts, only the latest counts."""
    import mathforge.evolve as evolve_module

    plan = plan_of(tmp_path, accelerate={"sft": str(REPO / "accelerate_configs/cpu_2proc.yaml")})
    step = next(s for s in plan.steps if s.label == "round 1, step sft")
    with pytest.raises(UserError) as err:
        evolve_module.run_step(step, plan.config)
    log = (step.out / "step.log").read_text()
    assert "ChildFailedError" in log  # the launcher's summary is there, and not what the line names
    assert "ChildFailedError" not in str(err.value)
    message = r"round 1, step sft: mathforge sft: error: model folder not found: .* \(exit code 1; log: "
    assert re.match(message, str(err.value)), str(err.value)
    with open(step.out / "step.log", "a") as f:
        f.write("\n=== a later attempt\nValueError: the later one\n")
    assert evolve_module._last_error(step.out / "step.log") == "ValueError: the later one"


def test_cli_bad_config_exit_code_and_one_line(tmp_path, capsys):
    from mathforge.cli import main

    path = write_config(micro_config(tmp_path / "runs", rounds=[{"rollouts": 8}]), tmp_path / "c.yaml")
    assert main(["evolve", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mathforge evolve: error: round 1: unknown key 'rollouts' " + err.split("'rollouts' ", 1)[1]
    assert len(err.splitlines()) == 1
    # structured fields can be overridden on the command line as YAML
    config = parse_args(["--config", str(path), "--rounds", "[{num_rollouts: 2}]", "--name", "other"])
    assert config.rounds == [{"num_rollouts": 2}] and config.name == "other"


# --- real runs -------------------------------------------------------------------------------------------


def _structure(report_md: str) -> str:
    """The report with every number masked: what must not change when a run is resumed."""
    return re.sub(r"[-+]?\d+(\.\d+)?%?", "#", report_md)


@pytest.mark.slow
def test_micro_run_outputs_and_report(run_root):
    run = finished_run(run_root)
    report = json.loads((run / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    r0, r1 = report["rounds"]
    assert r0["sft_examples"] == 8 and r0["greedy_accuracy"] is not None and r0["coverage"] is None
    # the bootstrapped micro model reproduces most of its 8 training problems: real data and pairs
    assert r1["coverage"] > 0 and r1["sft_examples"] > 0 and r1["pairs"] > 0
    assert r1["search_accuracy"] is not None and r1["mean_tokens"] > 0
    # the PPM holds out half of the problems that have pairs; with a handful of them that half can be empty
    assert r1["ppm_accuracy"] is None or 0 <= r1["ppm_accuracy"] <= 100
    md = (run / "report.md").read_text()
    assert "## Rounds" in md and "## Paired comparisons" in md and "## Did the recipe work?" in md
    assert "PPM-guided search (best_of_n) above greedy in round 1" in md
    assert (run / "rounds.png").read_bytes()[:4] == b"\x89PNG"
    # every comparison is `mathforge eval compare`'s paired computation on the two evaluations' samples
    from mathforge.eval.report import load_samples, paired

    comparisons = {c["what"]: c for c in report["comparisons"]}
    assert set(comparisons) == {"round 1: best_of_n with the PPM vs greedy", "round 1 vs round 0, greedy"}
    c = comparisons["round 1 vs round 0, greedy"]
    [direct] = paired(
        load_samples(run / "round_0/eval_greedy"), load_samples(run / "round_1/eval_greedy")
    ).values()
    assert (c["problems"], c["delta"], c["se"]) == (4, direct["delta"], direct["se"])
    assert c["verdict"] == (
        "better" if c["delta"] > 2 * c["se"] else "worse" if c["delta"] < -2 * c["se"] else "within noise"
    )
    assert f"| {c['delta']:+.1f} ± {c['se']:.1f} |" in md
    # the precision the stages ran in is this CPU's choice, recorded in the report and in the step recipes
    from mathforge.precision import this_cpu

    assert report["precision"] == {"setting": "auto", "chosen": this_cpu().describe()}
    assert yaml_bf16(run / "round_1/ppm") is this_cpu().train_bf16
    for step in ("search", "extract", "sft", "ppm", "eval_greedy", "eval_search"):
        folder = run / "round_1" / step
        assert (folder / "step_recipe.yaml").is_file() and (folder / "step_command.sh").is_file(), step
    assert "mathforge search --config" in (run / "round_1/search/step_command.sh").read_text()
    # the written recipe is what the stage ran with: the trainer's own resolved recipe agrees
    import yaml

    step = yaml.safe_load((run / "round_1/sft/step_recipe.yaml").read_text())
    resolved = yaml.safe_load((run / "round_1/sft/recipe.yaml").read_text())
    assert resolved["model_name_or_path"] == step["model_name_or_path"] == str(run / "round_0/sft")
    assert resolved["max_steps"] == 10


@pytest.mark.slow
def test_rerun_of_a_finished_run_skips_every_step(run_root, capsys):
    run = finished_run(run_root)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("model.safetensors")}
    capsys.readouterr()
    finished_run(run_root)
    out = capsys.readouterr().out
    assert "running" not in out and out.count("done already") == 10 and "WARNING" not in out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("model.safetensors")} == before
    # a finished step whose recipe changed since is kept, with a warning naming it and the changed key
    changed = micro_config(run_root / "runs")
    changed["overrides"]["sft"]["learning_rate"] = 1.0e-5
    evolve(parse_args(["--config", str(write_config(changed, run_root / "changed.yaml"))]))
    out = capsys.readouterr().out
    assert "running" not in out
    for label in ("round 0, step sft", "round 1, step sft"):
        assert f"WARNING: {label} was finished with a different recipe (changed: learning_rate)" in out
    assert out.count("WARNING") == 2
    assert {p: p.stat().st_mtime_ns for p in run.rglob("model.safetensors")} == before


def yaml_bf16(step: Path) -> bool:
    import yaml

    return yaml.safe_load((step / "recipe.yaml").read_text())["bf16"]


def _start(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "mathforge.evolve", "--config", str(config)],
            stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True,
        )  # fmt: skip


def _kill_when(proc: subprocess.Popen, ready, how: str, timeout: float = 240) -> None:
    """As soon as ready() holds: "term" sends SIGTERM to evolve alone (as `kill PID` does), "kill" SIGKILLs
    its whole process group (this test started it, in its own session)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, "kill point not reached in time"
        time.sleep(0.1)
    if how == "term":
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        time.sleep(2)
        with pytest.raises(ProcessLookupError):  # it left no process behind (executor, stage processes)
            os.killpg(proc.pid, 0)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(path: Path, chars: int) -> str:
    return f"\n--- {path} ---\n" + (path.read_text(errors="replace")[-chars:] if path.is_file() else "(none)")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


@pytest.mark.slow
def test_killed_twice_mid_round_then_resumed(run_root, tmp_path):
    """SIGTERM in the middle of round 1's search, SIGKILL in the middle of its SFT (launched with accelerate
    on 2 processes, after a checkpoint), then let it finish: same report structure as the uninterrupted
    run, no duplicated trees or rows."""
    reference = finished_run(run_root)
    config = micro_config(tmp_path / "runs", name="killed")
    config["rounds"][0]["sft"] = {"max_steps": 30}  # long enough to be caught between checkpoints
    config["accelerate"] = {"sft": str(REPO / "accelerate_configs/cpu_2proc.yaml")}  # 2 processes, launched
    path = write_config(config, tmp_path / "killed.yaml")
    run = tmp_path / "runs" / "killed"
    # Round 0 is the uninterrupted run's (copied): its steps must be recognised as done from their outputs.
    shutil.copytree(reference / "round_0", run / "round_0")
    timings = json.loads((reference / "timings.json").read_text())
    round0 = {k: v for k, v in timings.items() if k.startswith("round 0,")}
    (run / "timings.json").write_text(json.dumps(round0))
    log = tmp_path / "evolve.log"
    trees = run / "round_1" / "search" / "trees.jsonl"

    _kill_when(_start(path, log), lambda: 2 <= len(_lines(trees)) < 8, "term")
    assert 2 <= len(_lines(trees)) < 8 and not (run / "round_1" / "extract").exists()
    sft = run / "round_1" / "sft"
    _kill_when(_start(path, log), lambda: any(sft.glob("checkpoint-*/checkpoint_complete")), "kill")
    assert not (sft / "model.safetensors").exists()
    proc = _start(path, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-1500:] + _tail(sft / "step.log", 3000)

    text = log.read_text()
    assert "round 0, step sft: done already" in text and "round 0, step sft: running" not in text
    assert "resuming from" in (sft / "step.log").read_text()  # the SFT continued from its checkpoint
    assert "accelerate.commands.launch --config_file" in (sft / "step_command.sh").read_text()
    ranks = [json.loads((sft / "ranks" / f"rank_{i}.json").read_text()) for i in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["resumed_from"].startswith("checkpoint-")
    ids = [json.loads(line)["id"] for line in _lines(trees)]
    assert len(ids) == len(set(ids)) == 8  # every problem searched once, none twice
    rows = _lines(run / "round_1" / "extract" / "sft" / "train.jsonl")
    assert len(rows) == len(set(rows)) > 0
    resumed = (run / "report.md").read_text().replace(str(run), "RUN").replace("`killed`", "`micro`")
    assert _structure(resumed) == _structure(
        (reference / "report.md").read_text().replace(str(reference), "RUN")
    )
    assert set(json.loads((run / "timings.json").read_text())) == set(timings)  # the same steps ran


@pytest.mark.slow
def test_round_without_data_stops_and_keeps_earlier_steps(tmp_path):
    """A policy that solves nothing: round 1 stops at extraction, naming it; round 0 stays finished."""
    config = micro_config(tmp_path / "runs", name="nodata", eval_recipe=None, eval_search=None)
    config["bootstrap"] = {"max_steps": 1, "save_strategy": "no"}  # one step: the model solves nothing
    config["toy_data"]["n_train"] = 4
    config["rounds"][0].update(num_rollouts=2, max_problems=4)
    path = write_config(config, tmp_path / "nodata.yaml")
    lines = []
    with pytest.raises(UserError, match=r"^round 1, step extract: the search produced no data") as err:
        evolve(parse_args(["--config", str(path)]), echo=lines.append)
    assert "\n" not in str(err.value)
    run = tmp_path / "runs" / "nodata"
    assert (run / "round_0" / "sft" / "model.safetensors").is_file()
    assert (run / "round_1" / "extract" / "stats.json").is_file()
    # started again: nothing earlier is redone, and the same message
    lines.clear()
    with pytest.raises(UserError, match=r"^round 1, step extract: the search produced no data"):
        evolve(parse_args(["--config", str(path)]), echo=lines.append)
    assert lines and all("done already" in line for line in lines)


@pytest.mark.slow
def test_stage_two_rl_and_its_report(run_root, tmp_path):
    """RL after the last round, launched through the evolve plan; the report gets its before/after table."""
    reference = finished_run(run_root)
    config = micro_config(
        tmp_path / "runs", name="rl", rl_recipe=str(REPO / "recipes/tiny/rl/config_toy.yaml")
    )
    config["overrides"]["rl"] = {"dataset_name": "{data}", "max_steps": 2}
    path = write_config(config, tmp_path / "rl.yaml")
    run = tmp_path / "runs" / "rl"
    shutil.copytree(
        reference, run, ignore=shutil.ignore_patterns("report.*", "*.png", "timings.json", "evolve.yaml")
    )
    report = evolve(parse_args(["--config", str(path)]), echo=lambda _: None)
    assert (run / "rl" / "train" / "model.safetensors").is_file()
    rl = report["rl"]
    assert rl["accuracy_after"] is not None and rl["tokens_after"] is not None
    assert "## Stage 2: RL for efficiency" in (run / "report.md").read_text() and (run / "rl.png").is_file()


def test_config_dataclass_rejects_bad_values():
    with pytest.raises(ValueError, match="sft_init"):
        EvolveConfig(sft_init="latest")
    with pytest.raises(ValueError, match="sft_data must be round or all_rounds"):
        EvolveConfig(sft_data="all")


@pytest.mark.parametrize("model", ["Qwen2.5-Math-7B", "Qwen2.5-Math-1.5B"])
def test_gpu_recipes_plan_with_the_papers_round_settings(model, monkeypatch):
    """The GPU recipes are complete (every key a stage option, every file present) and carry rStar-Math's
    per-round settings; nothing is downloaded (planning touches no model or dataset)."""
    from mathforge.steps import SYSTEM_PROMPT

    monkeypatch.chdir(REPO)
    plan = Plan(parse_args(["--config", f"recipes/{model}/evolve.yaml"]))
    plan.validate()
    searches = [s.recipe for s in plan.steps if s.name == "search"]
    assert [(s["num_rollouts"], s["num_candidates"]) for s in searches] == [
        (8, 5),
        (16, 8),
        (16, 8),
        (64, 16),
    ]
    assert all(s["c"] == 2.0 and s["selection"] == "uct" and s["max_depth"] == 16 for s in searches)
    assert [s["ppm_path"] is None for s in searches] == [True, False, False, False]  # PPM from round 2
    assert all(
        s.recipe["system_prompt"] == SYSTEM_PROMPT for s in plan.steps if s.stage in ("search", "eval")
    )
    assert plan.config.sft_init == "base" and all(Path(p).is_file() for p in plan.config.accelerate.values())
    rl = plan.steps[-2]
    assert rl.label == "stage 2, step train" and rl.recipe["system_prompt"] == SYSTEM_PROMPT
    assert rl.recipe["model_name_or_path"].endswith("round_4/sft") and "rl" in plan.config.accelerate


# --- precision, the last-round rule, the report's statistics, the live line -------------------------------


def test_precision_auto_sets_trainers_bf16_and_generators_dtype_unless_overridden(tmp_path):
    from mathforge.precision import this_cpu

    chosen = this_cpu()
    rl = str(REPO / "recipes/tiny/rl/config_toy.yaml")
    bootstrap = {"max_steps": 5, "bf16": not chosen.train_bf16}  # explicit: kept
    steps = {s.label: s.recipe for s in plan_of(tmp_path, rl_recipe=rl, bootstrap=bootstrap).steps}
    assert steps["round 0, step sft"]["bf16"] is (not chosen.train_bf16)
    for label in ("round 1, step sft", "round 1, step ppm", "stage 2, step train"):
        assert steps[label]["bf16"] is chosen.train_bf16, label
    assert (
        steps["round 1, step search"]["dtype"] == chosen.torch_dtype
    )  # the micro run's transformers backend
    vllm = micro_config(tmp_path)["overrides"]
    vllm["eval"]["backend"] = "vllm"
    steps = {s.label: s.recipe for s in plan_of(tmp_path, overrides=vllm).steps}
    assert steps["round 1, step eval_greedy"]["dtype"] == chosen.vllm_dtype
    # an eval recipe without backend runs EvalConfig's default backend, vLLM
    recipe = yaml.safe_load((REPO / "recipes/tiny/eval/config_toy.yaml").read_text())
    del recipe["backend"], vllm["eval"]["backend"]
    no_backend = write_config(recipe, tmp_path / "eval.yaml")
    steps = {s.label: s.recipe for s in plan_of(tmp_path, overrides=vllm, eval_recipe=str(no_backend)).steps}
    assert "backend" not in steps["round 1, step eval_greedy"]
    assert steps["round 1, step eval_greedy"]["dtype"] == chosen.vllm_dtype
    # forced, and left to the stage recipes
    steps = {s.label: s.recipe for s in plan_of(tmp_path, precision="float32").steps}
    assert steps["round 1, step ppm"]["bf16"] is False and steps["round 1, step search"]["dtype"] == "float32"
    steps = {s.label: s.recipe for s in plan_of(tmp_path, precision="recipe").steps}
    assert "dtype" not in steps["round 1, step search"]  # the search recipe sets none
    with pytest.raises(UserError, match="precision must be one of auto, bf16, float32, recipe"):
        plan_of(tmp_path, precision="fp16")


def test_plan_of_the_last_round_rule(tmp_path):
    rounds = [{"num_rollouts": 4}, {"num_rollouts": 8, "unsolved_rollouts_factor": 4}]
    plan = plan_of(tmp_path, rounds=rounds)
    labels = [s.label for s in plan.steps]
    assert "round 1, step search_unsolved" not in labels
    i = labels.index("round 2, step search")
    assert labels[i + 1 : i + 3] == ["round 2, step search_unsolved", "round 2, step extract"]
    steps = {s.label: s for s in plan.steps}
    extra = steps["round 2, step search_unsolved"]
    run = tmp_path / "runs" / "micro"
    assert extra.recipe["num_rollouts"] == 32 and extra.recipe["max_problems"] is None
    assert extra.recipe["dataset_name"] == str(run / "round_2/search_unsolved/problems")
    assert extra.recipe["model_name_or_path"] == steps["round 2, step search"].recipe["model_name_or_path"]
    assert steps["round 2, step extract"].recipe["trees"] == [
        str(run / "round_2/search/trees.jsonl"),
        str(run / "round_2/search_unsolved/trees.jsonl"),  # later: a problem's new tree replaces its first
    ]
    plan.validate()
    with pytest.raises(UserError, match="round 2: unsolved_rollouts_factor must be a number >= 1"):
        plan_of(tmp_path, rounds=[{}, {"unsolved_rollouts_factor": 0}])


@pytest.mark.slow
def test_last_round_rule_searches_the_never_solved_problems_again(run_root, tmp_path):
    """Round 1 of the finished micro run again, now with 4x the rollouts for the problems its search left
    unsolved: only those are searched again, extraction takes their new trees, the report shows coverage
    before and after."""
    from mathforge.search.mcts import read_trees

    reference = finished_run(run_root)
    config = micro_config(tmp_path / "runs", name="unsolved")
    config["rounds"][0]["unsolved_rollouts_factor"] = 4
    path = write_config(config, tmp_path / "unsolved.yaml")
    run = tmp_path / "runs" / "unsolved"
    shutil.copytree(reference / "round_0", run / "round_0")
    shutil.copytree(reference / "round_1" / "search", run / "round_1" / "search")
    first = read_trees(run / "round_1/search/trees.jsonl")
    never = {str(t["id"]) for t in first if not t["solved"]}
    report = evolve(parse_args(["--config", str(path)]), echo=lambda _: None)
    extra = run / "round_1" / "search_unsolved"
    meta = json.loads((extra / "unsolved.json").read_text())
    assert meta == {"round_problems": 8, "never_solved": len(never), "factor": 4, "num_rollouts": 64}
    again = read_trees(extra / "trees.jsonl")
    assert {str(t["id"]) for t in again} == never  # only the never-solved problems, each once
    assert all(t["num_rollouts"] == 64 for t in again) if again else True
    stats = json.loads((run / "round_1/extract/stats.json").read_text())
    solved_now = sum(t["solved"] for t in again)
    assert stats["problems"] == 8 and stats["solved"] == 8 - len(never) + solved_now
    u = report["rounds"][1]["unsolved_pass"]
    assert u["coverage_before"] == 100.0 * (8 - len(never)) / 8
    assert u["coverage_after"] == stats["coverage"] and u["solved"] == solved_now
    assert "## Extra search of never-solved problems" in (run / "report.md").read_text()


def _samples(folder: Path, correct: list[bool], tokens: list[int] | None = None) -> Path:
    """An evaluation's samples.jsonl as `mathforge eval` writes it (one greedy sample per problem)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"benchmark": "toy", "id": str(i), "correct": c, "tokens": (tokens or [100] * len(correct))[i]}
        for i, c in enumerate(correct)
    ]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_verdict_is_two_standard_errors_either_way():
    from mathforge.evolve_report import verdict

    assert verdict(2.5, 1.2) == "better" and verdict(-2.5, 1.2) == "worse"
    assert verdict(2.4, 1.2) == "within noise" and verdict(-1.0, 1.2) == "within noise"
    assert verdict(0.0, 0.0) == "within noise"


def test_paired_accuracy_and_tokens_on_the_same_problems(tmp_path):
    from mathforge.eval.report import load_samples, paired
    from mathforge.evolve_report import paired_accuracy, paired_tokens

    # 100 problems: B solves 20 that A missed and misses 4 that A solved (+16 points)
    a = [i < 50 for i in range(100)]
    b = [(i < 46) or (50 <= i < 70) for i in range(100)]
    before, after = (
        _samples(tmp_path / "a", a, [200] * 100),
        _samples(tmp_path / "b", b, [140] * 50 + [160] * 50),
    )
    result = paired_accuracy(before, after)
    direct = paired(load_samples(before), load_samples(after))["toy"]
    assert (result["delta"], result["se"], result["better"], result["worse"]) == (
        direct["delta"], direct["se"], 20, 4,
    )  # fmt: skip
    assert result["delta"] == pytest.approx(16.0) and result["verdict"] == "better"
    assert paired_accuracy(after, before)["verdict"] == "worse"
    noisy = _samples(tmp_path / "c", [(i < 48) or (50 <= i < 53) for i in range(100)])  # -2 +3 problems
    assert paired_accuracy(before, noisy)["verdict"] == "within noise"
    tokens = paired_tokens(before, after)
    assert tokens["change_percent"] == pytest.approx(-25.0) and tokens["se_percent"] == pytest.approx(
        100 * (10 * (100 / 99) ** 0.5 / 10) / 200, rel=1e-6
    )
    solved = paired_tokens(before, after, solved_by_both=True)  # problems 0-45: 200 -> 140 tokens
    assert (solved["problems"], solved["before"], solved["after"]) == (46, 200.0, 140.0)
    assert solved["change_percent"] == pytest.approx(-30.0) and solved["se_percent"] == 0.0
    assert paired_accuracy(before, tmp_path / "missing") is None


def test_claims_use_the_verdicts_and_the_rl_goal():
    from mathforge.evolve_report import claims, rl_goal

    def row(k, ppm):
        return {"round": k, "ppm_accuracy": ppm, "ppm_accuracy_se": 1.0, "ppm_eval_pairs": 400,
                "search_mode": "best_of_n"}  # fmt: skip

    def comparison(what, delta, se, verdict):
        return {"what": what, "delta": delta, "se": se, "verdict": verdict}

    rows = [row(0, None), row(1, 80.0), row(2, 74.0)]
    comparisons = [
        comparison("round 2 vs round 0, greedy", 3.3, 1.2, "better"),
        comparison("round 2: best_of_n with the PPM vs greedy", 1.5, 1.0, "within noise"),
    ]
    rl = {"tokens": {"change_percent": -31.0, "se_percent": 1.5},
          "accuracy": {"delta": -1.0, "se": 1.3, "verdict": "within noise"}}  # fmt: skip
    out = {c["claim"]: c for c in claims(rows, comparisons, rl)}
    assert out["round 2 above round 0 in greedy accuracy"]["holds"] is True
    assert out["PPM-guided search (best_of_n) above greedy in round 2"]["holds"] is False
    assert out["PPM held-out pairwise accuracy at least 75% in every round"]["holds"] is False  # round 2: 74
    assert out["RL: at least 30% fewer tokens, accuracy not worse beyond noise"]["holds"] is True
    assert rl_goal({**rl, "accuracy": {**rl["accuracy"], "verdict": "worse"}})["met"] is False
    assert rl_goal({**rl, "tokens": {"change_percent": -29.9, "se_percent": 1.0}})["met"] is False


def test_live_line_reads_the_steps_own_progress_bar(tmp_path):
    """A real tqdm bar written into a step log is read back (count, total, tqdm's estimate of what is left);
    the live line is written to the console descriptor while the step runs."""
    from tqdm import tqdm

    from mathforge.evolve_progress import LiveLine, read_progress, status_line

    log = tmp_path / "step.log"
    with open(log, "w") as f:
        f.write("=== header\nsome warning: 1/2 of something\n")
        bar = tqdm(total=640, desc="search", unit="problem", file=f, mininterval=0)
        bar.update(120)
        f.flush()
        progress = read_progress(log)
        assert (progress["desc"], progress["n"], progress["total"]) == ("search", 120, 640)
        assert progress["left"] is not None
        bar.close()
    (tmp_path / "pretrain.log").write_text("pretrain step 300/1200: copy loss 0.410\n")
    count = read_progress(tmp_path / "pretrain.log")
    assert (count["n"], count["total"], count["left"]) == (300, 1200, None)
    assert status_line("[evolve] 1/9 round 0, step base_model", 60.0, count) == (
        "[evolve] 1/9 round 0, step base_model | pretrain 300/1200 | 1:00 elapsed, ~3:00 left"
    )
    assert status_line("x", 90.0, count, counted_at=60.0).endswith("| 1:30 elapsed, ~2:30 left")
    assert read_progress(tmp_path / "none.log") is None
    read_fd, write_fd = os.pipe()  # not a terminal: one full line per update
    try:
        with LiveLine(write_fd, "[evolve] 3/9 round 1, step search", log, every=0.05):
            time.sleep(0.5)
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            lines = pipe.read().splitlines()
    finally:
        with contextlib.suppress(OSError):
            os.close(write_fd)
    assert lines and all(
        line.startswith("[evolve] 3/9 round 1, step search | search 120/640 | 0:00") for line in lines
    )


def test_demo_recipe_plans_600_held_out_640_per_round_masked_sft(monkeypatch):
    from mathforge.precision import this_cpu

    monkeypatch.chdir(REPO)
    plan = Plan(parse_args(["--config", "recipes/tiny/evolve.yaml"]))
    plan.validate()
    steps = {s.label: s.recipe for s in plan.steps}
    assert plan.config.toy_data["n_test"] >= 600 and plan.config.eval_problems == 600
    assert all(steps[f"round {k}, step eval_greedy"]["max_problems"] == 600 for k in (0, 1, 2))
    assert [steps[f"round {k}, step search"]["max_problems"] for k in (1, 2)] == [640, 640]
    # greedy in every round, a PPM-weighted vote of 8 samples in the last; no never-solved pass
    assert (steps["round 2, step eval_search"]["search"], steps["round 2, step eval_search"]["search_n"]) == (
        "weighted_vote",
        8,
    )
    assert [k for k in (1, 2) if f"round {k}, step eval_search" in steps] == [2]
    assert not any("search_unsolved" in label for label in steps)
    assert steps["round 2, step search"]["dtype"] == this_cpu().vllm_dtype  # the demo searches with vLLM
    assert steps["stage 2, step train"]["bf16"] is this_cpu().train_bf16
    # every SFT (the bootstrap and the rounds') leaves the executor's output out of the loss
    assert all(steps[f"round {k}, step sft"]["mask_executor_output"] is True for k in (0, 1, 2))
    # round 2 trains on both rounds' solutions, one pass (20 steps x 32 for one round's ~650, 40 for both)
    assert steps["round 2, step sft"]["dataset_name"].endswith("round_2/sft_data")
    assert [steps[f"round {k}, step sft"]["max_steps"] for k in (1, 2)] == [20, 40]


def test_the_runs_seed_moves_every_stages_seed_but_not_the_inputs(tmp_path):
    rl = str(REPO / "recipes/tiny/rl/config_toy.yaml")
    seeds = {}
    for seed in (0, 3):
        plan = plan_of(tmp_path / str(seed), seed=seed, rl_recipe=rl)
        seeds[seed] = {s.label: s.recipe.get("seed") for s in plan.steps}
    base, moved = seeds[0], seeds[3]
    for label, value in base.items():
        if label.startswith("round 0, step") and label.split()[-1] in ("base_model", "toy"):
            assert moved[label] == value, label  # the run's inputs are the same for every seed
        elif value is not None:
            assert moved[label] == value + 3, label
    assert (
        moved["round 1, step search"] == 4 and moved["stage 2, step train"] == base["stage 2, step train"] + 3
    )


# --- several nodes (two "nodes" on this machine, MAIN_ADDR 127.0.0.1) ------------------------------------


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_nodes(config: Path, logs: list[Path]) -> list[subprocess.Popen]:
    main_port, evolve_port = _free_ports(2)
    procs = []
    for rank, log in enumerate(logs):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "NUM_MACHINES": "2",
               "MACHINE_RANK": str(rank), "MAIN_ADDR": "127.0.0.1", "MAIN_PORT": str(main_port),
               "EVOLVE_PORT": str(evolve_port), "GPUS_PER_NODE": "1"}  # fmt: skip
        with open(log, "ab") as f:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "mathforge.evolve", "--config", str(config)],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=REPO,
                    start_new_session=True,
                )  # fmt: skip
            )
    return procs


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.mark.slow
def test_two_nodes_run_round_one_with_the_trainers_across_both(run_root, tmp_path):
    """evolve on two nodes (both here, one process each): SFT and PPM, which have accelerate configs, run on
    both nodes as one job (world size 2); search, extraction and evaluation run on node 0 while node 1
    waits; node 0 writes the report. (Search across nodes: test_cluster's launch.sh test; here it stays in
    one process so that its trees, and so the preference pairs, are those of the reference run.)"""
    reference = finished_run(run_root)
    config = micro_config(tmp_path / "runs", name="nodes")
    cpu = str(REPO / "accelerate_configs/cpu_2proc.yaml")
    config["accelerate"] = {"sft": cpu, "ppm": cpu}
    path = write_config(config, tmp_path / "nodes.yaml")
    run = tmp_path / "runs" / "nodes"
    shutil.copytree(reference / "round_0", run / "round_0")
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    codes = _wait_all(_start_nodes(path, logs), timeout=900)
    assert codes == [0, 0], logs[0].read_text()[-3000:] + "\n----\n" + logs[1].read_text()[-3000:]

    node1 = logs[1].read_text()
    launched = re.findall(r"node 1: (round \d, step \w+): launching", node1)
    assert launched == ["round 1, step sft", "round 1, step ppm"]
    assert "every step finished" in node1
    for step in ("sft", "ppm"):
        out = run / "round_1" / step
        ranks = [json.loads((out / "ranks" / f"rank_{i}.json").read_text()) for i in (0, 1)]
        assert [r["world_size"] for r in ranks] == [2, 2]
        assert "--num_machines 2 --machine_rank 0 --num_processes 2" in (out / "step_command.sh").read_text()
        assert (out / "step.node1.log").is_file()
    for step in ("search", "extract", "eval_greedy"):
        assert not (run / "round_1" / step / "step.node1.log").exists()  # node 0's alone
    assert (run / "report.md").is_file() and (run / "round_1" / "eval_greedy" / "results.json").is_file()


@pytest.mark.slow
def test_a_failure_on_node_0_stops_the_other_node_with_its_message(tmp_path):
    """Node 0's bootstrap SFT fails (its base model is broken); node 1, waiting for that step, exits non-zero
    with node 0's one-line error instead of waiting forever."""
    config = micro_config(tmp_path / "runs", name="broken")
    path = write_config(config, tmp_path / "broken.yaml")
    base = tmp_path / "runs" / "broken" / "round_0" / "base_model"
    base.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (base / name).write_text("{}")  # counts as built; loading it fails
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    codes = _wait_all(_start_nodes(path, logs), timeout=300)
    assert codes[0] != 0 and codes[1] != 0, logs[1].read_text()[-2000:]
    last = [line for line in logs[1].read_text().splitlines() if line.strip()][-1]
    assert "node 0 failed: round 0, step sft" in last, last
