"""`mathforge evolve`: the whole recipe as one resumable command (rStar-Math self-evolution + stage-2 RL).

    mathforge evolve --config recipes/tiny/evolve.yaml [--name other --runs_dir runs ...]

**Steps.** Round 0 builds what the run starts from (a tiny model and the toy task, when asked) and
bootstraps the policy by SFT on teacher solutions; rounds 1..R each search with the current policy (and,
from round 2, the previous round's PPM), extract SFT data and preference pairs from the trees, fine-tune
a new policy, train its PPM and evaluate (greedy, and search with the PPM); then stage 2 runs RL on the
last policy and evaluates it again. Every step runs the same code as the stand-alone command
(`mathforge sft`, `search`, `extract`, `ppm`, `eval`, `rl`): it is given a recipe, the stage's own recipe
file merged with the run's overrides, written as ``step_recipe.yaml`` into the step's folder
``runs/<name>/round_<k>/<step>/`` (stage 2: ``runs/<name>/rl/<step>/``) with the exact command in
``step_command.sh``, so any step can be re-run by hand. A stage with an accelerate config is launched
with ``accelerate launch --config_file X -m mathforge.<stage>``; the stages listed in ``subprocess`` run
in their own Python process (``[all]`` on GPUs, where a vLLM engine keeps its memory until its process
ends); the others run in this process. ``threads`` sets ``OMP_NUM_THREADS`` of a stage's own process.
``precision`` sets the trainers' ``bf16`` and the search/eval ``dtype`` from what the CPU computes fast
(:mod:`mathforge.precision`). A round with ``unsolved_rollouts_factor`` searches again, with that many
times its rollouts, the problems no search has solved yet (rStar-Math's last-round rule). Each step's
output goes to ``step.log`` in its folder; the console shows a live line of the running step's progress
(:mod:`mathforge.evolve_progress`).

**Resuming.** A step is finished when its real outputs exist (a trainer's ``model.safetensors`` and
recipe, trees for every problem, extraction's ``stats.json``, an evaluation's ``results.json``), not
because a flag says so; a re-run skips finished steps and re-runs the others, which resume themselves
(trainers from their last checkpoint, search from the trees already written).

**Report.** ``runs/<name>/report.md`` (+ ``report.json``, ``rounds.png``, ``rl.png``) is rebuilt from
the step outputs after every run: one row per round, the paired comparisons (± one standard error,
better / within noise / worse), RL before/after against its goal, and which of the recipe's claims hold
(:mod:`mathforge.evolve_report`).

**Errors.** A bad config (no model, unknown stage or key, missing recipe) or a round that produced no
data stops the run with one line naming the round and the step; finished steps stay finished. Every step
recipe is checked, before anything runs, against the option dataclasses its stage parses (:func:`stage_types`);
a stage that cannot be imported stops the run there too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mathforge.cli import die_with_parent
from mathforge.cluster import Nodes, NodeSync, nodes_from_env
from mathforge.config import load_yaml, save_yaml, write_atomic
from mathforge.errors import UserError

# stage -> module run with `--config step_recipe.yaml`
MODULES = {
    "tiny_model": "mathforge.tiny_model",
    "toy_data": "mathforge.data.toy",
    "sft": "mathforge.sft",
    "search": "mathforge.search.mcts",
    "extract": "mathforge.search.extract",
    "ppm": "mathforge.ppm",
    "eval": "mathforge.eval",
    "rl": "mathforge.rl",
}
CLI_NAMES = {"tiny_model": "tiny-model", "toy_data": "data toy"}  # `mathforge <name>` where not the stage
TRAINERS = ("sft", "ppm", "rl")
# the stages accelerate can launch: the trainers, and search as N data-parallel copies (one tree file each)
LAUNCHABLE = (*TRAINERS, "search")
ROUND_KEYS = (
    "num_rollouts", "num_candidates", "max_problems", "unsolved_rollouts_factor",
    "search", "extract", "sft", "ppm", "eval", "eval_search",
)  # fmt: skip
PRECISIONS = ("auto", "bf16", "float32", "recipe")
ONE_NODE = Nodes()  # a run on this machine alone
STRUCTURED = ("tiny_model", "toy_data", "rounds", "overrides", "accelerate", "bootstrap", "eval_search")


@dataclass
class EvolveConfig:
    """The run: what it starts from, the rounds, the stage recipes and how each stage is launched.

    Mapping and list fields are set in the YAML (or on the command line as a YAML/JSON value, e.g.
    ``--tiny_model '{size: micro}'``). In string values of ``overrides``, ``rounds``, ``bootstrap`` and
    ``eval_search``, ``{run}`` is the run folder, ``{data}`` the toy data folder, ``{base_model}`` the
    base model, ``{policy}`` the step's input policy and ``{ppm}`` the newest PPM.
    """

    name: str = field(default="tiny", metadata={"help": "Run name: everything goes to <runs_dir>/<name>/."})
    runs_dir: str = field(default="runs", metadata={"help": "Parent folder of the run."})
    base_model: str | None = field(
        default=None,
        metadata={"help": "Base model (Hub id or folder). None: build one from tiny_model."},
    )
    tiny_model: dict | None = field(
        default=None,
        metadata={
            "help": "Options of `mathforge tiny-model` (size, seed, ...) to build the base model in "
            "round_0/base_model when base_model is None."
        },
    )
    toy_data: dict | None = field(
        default=None,
        metadata={
            "help": "Options of `mathforge data toy` (n_train, n_test, seed, levels, ...): the toy task is "
            "written to round_0/toy and is the default for every dataset below. None: no toy data."
        },
    )
    bootstrap_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Teacher solutions (problem + solution) for the round-0 SFT. None: the toy data's "
            "train split if toy_data is set, else no round-0 SFT (round 1 searches with base_model)."
        },
    )
    problems_dataset: str | None = field(
        default=None, metadata={"help": "Problems searched each round (default: the toy data)."}
    )
    problems_split: str = field(default="train", metadata={"help": "Split of problems_dataset."})
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "Held-out problems for every evaluation (default: the toy data); None and no "
                  "toy data: the eval recipe's own problem sets."},
    )  # fmt: skip
    eval_split: str = field(default="test", metadata={"help": "Split of eval_dataset."})
    eval_problems: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N problems only (None: all)."}
    )
    rounds: list[dict] = field(
        default_factory=list,
        metadata={
            "help": f"One mapping per self-evolution round, keys from {', '.join(ROUND_KEYS)}: search shape "
            "and per-stage overrides for that round (eval_search: false skips that round's search evaluation)."
        },
    )
    sft_recipe: str | None = field(default=None, metadata={"help": "Recipe YAML of every SFT step."})
    search_recipe: str | None = field(default=None, metadata={"help": "Recipe YAML of every search step."})
    ppm_recipe: str | None = field(default=None, metadata={"help": "Recipe YAML of every PPM step."})
    eval_recipe: str | None = field(default=None, metadata={"help": "Recipe YAML of every evaluation."})
    rl_recipe: str | None = field(
        default=None, metadata={"help": "Recipe YAML of stage-2 RL. None: no stage 2."}
    )
    overrides: dict = field(
        default_factory=dict,
        metadata={"help": "stage -> {key: value} applied to that stage's recipe in every round."},
    )
    bootstrap: dict = field(
        default_factory=dict, metadata={"help": "Overrides of the round-0 SFT (e.g. more steps)."}
    )
    eval_search: dict | None = field(
        default=None,
        metadata={
            "help": "Overrides of the search evaluation run after greedy in rounds with a PPM (e.g. "
            "{search: best_of_n, search_n: 8, temperature: 0.7}). None: greedy evaluation only."
        },
    )
    sft_init: str = field(
        default="base",
        metadata={
            "help": "What each round's SFT starts from: base (the base model, as rStar-Math) or previous "
            "(the previous round's policy)."
        },
    )
    sft_data: str = field(
        default="round",
        metadata={
            "help": "What each round's SFT trains on: round (the solutions that round's search found) or "
            "all_rounds (those of every round so far, concatenated in round_<k>/sft_data/: with a few hundred "
            "solved problems a round, one round's set alone moves the policy by chance as much as by skill)."
        },
    )
    accelerate: dict = field(
        default_factory=dict,
        metadata={
            "help": f"stage -> accelerate config file, for {', '.join(LAUNCHABLE)}: launched with accelerate "
            "(search: num_processes data-parallel copies, each with its own GPUs and tree file)."
        },
    )
    subprocess: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Stages run in their own Python process (`python -m mathforge.<stage>`), e.g. [search, eval] "
            "so that each vLLM engine is freed with its process; [all] on GPUs. Others run in this process."
        },
    )
    threads: dict = field(
        default_factory=dict,
        metadata={
            "help": "stage -> OMP_NUM_THREADS of its process (stages in `subprocess` or `accelerate`). On a "
            "2-core CPU the search is faster with 1, where vLLM's threads would compete with the executor's "
            "processes for the cores (measured: docs/experiments.md)."
        },
    )
    log_to_console: bool = field(
        default=False, metadata={"help": "Show the stages' output instead of writing it to step.log only."}
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "The run's seed: round k searches with seed+k; the trainers (sft, ppm, rl) and the "
            "evaluations use their recipe's seed + this (0: the recipes' own). The base model and the toy "
            "data keep their own seeds (tiny_model.seed, toy_data.seed): runs with different seeds start "
            "from the same inputs."
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "What the stages compute in on a CPU: auto (bf16 where the CPU has bf16 instructions, "
            "see mathforge.precision: vLLM's dtype with AMX or avx512_bf16, trainers' bf16 autocast and a "
            "transformers generator's with AMX only; float32 elsewhere), bf16, float32, or recipe (the stage recipes' own bf16/dtype; "
            "what auto does on a machine with a GPU). Sets trainers' bf16 and search/eval's dtype unless "
            "overrides set them."
        },
    )

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.sft_init not in ("base", "previous"):
            raise ValueError(f"sft_init must be base or previous, not {self.sft_init!r}")
        if self.sft_data not in ("round", "all_rounds"):
            raise ValueError(f"sft_data must be round or all_rounds, not {self.sft_data!r}")
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a folder name, not {self.name!r}")


# --- one step ------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One stage run of the plan: its folder, its recipe, and how to tell it is finished."""

    where: str  # "round 1" or "stage 2"
    name: str  # folder name: sft, search, extract, ppm, eval_greedy, ...
    stage: str  # key of MODULES
    out: Path
    recipe: dict
    done: Callable[[], bool]
    check: Callable[[], None] | None = None  # after the step: stop if it produced nothing usable
    prepare: Callable[[], None] | None = None  # before its done check: write inputs known only by now

    @property
    def label(self) -> str:
        return f"{self.where}, step {self.name}"


def _has(folder: Path, *names: str) -> Callable[[], bool]:
    return lambda: all((folder / n).is_file() for n in names)


def _subst(value, paths: dict[str, str]):
    """Replace the {run}/{data}/... placeholders in the strings of an override value."""
    if isinstance(value, str):
        for key, path in paths.items():
            value = value.replace(key, path)
        return value
    if isinstance(value, list):
        return [_subst(v, paths) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v, paths) for k, v in value.items()}
    return value


def _problem_ids(dataset: str, split: str, max_problems: int | None) -> set[str]:
    from mathforge.data.loading import load_problems

    return {str(i) for i in load_problems(dataset, split, max_problems=max_problems)["id"]}


def _trees_cover(trees: Path, recipe: dict) -> Callable[[], bool]:
    """Search is finished when the tree files hold a tree for every problem of the step's problem set."""

    def done() -> bool:
        from mathforge.search.mcts import read_tree_set

        have = {str(t["id"]) for t in read_tree_set(trees)}  # the file and any data-parallel shards
        if not have:
            return False
        want = _problem_ids(
            recipe["dataset_name"],
            stage_option("search", recipe, "dataset_split"),
            stage_option("search", recipe, "max_problems"),
        )
        return want <= have

    return done


class Plan:
    """Every step of a run, in order, from the config (nothing runs while planning)."""

    def __init__(self, config: EvolveConfig):
        self.config = config
        self.run_dir = Path(config.runs_dir) / config.name
        self.steps: list[Step] = []
        self._recipes: dict[str, dict] = {}
        self._check_config()
        self.precision = self._precision()
        self._build()

    # -- config checks that need no stage to run
    def _check_config(self) -> None:
        c = self.config
        for field_name in ("overrides", "accelerate", "subprocess", "threads"):
            for stage in getattr(c, field_name):
                allowed = {"accelerate": LAUNCHABLE, "subprocess": (*MODULES, "all")}.get(
                    field_name, tuple(MODULES)
                )
                if stage not in allowed:
                    raise UserError(
                        f"unknown stage '{stage}' in {field_name} (choose from: {', '.join(allowed)})"
                    )
        for stage, n in c.threads.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise UserError(f"threads of {stage} must be a whole number >= 1, not {n!r}")
            if not runs_in_own_process(stage, c):
                raise UserError(
                    f"threads of {stage}: the stage runs inside evolve's process, where the thread count is "
                    f"already set; add {stage} to subprocess"
                )
        for stage, path in c.accelerate.items():
            if not Path(path).is_file():
                raise UserError(f"accelerate config for {stage} not found: {path}")
        if c.base_model is None and c.tiny_model is None:
            raise UserError(
                "round 0, step base_model: no model: set base_model (Hub id or folder) or tiny_model"
            )
        if (
            c.base_model
            and c.base_model.startswith((".", "/", "~"))
            and not Path(c.base_model).expanduser().exists()
        ):
            raise UserError(f"round 0, step base_model: model folder not found: {c.base_model}")
        if not c.rounds and c.rl_recipe is None and self._bootstrap_data() is None:
            raise UserError("nothing to do: no bootstrap data, no rounds and no rl_recipe")
        for k, r in enumerate(c.rounds, start=1):
            if not isinstance(r, dict):
                raise UserError(f"round {k}: must be a mapping of {', '.join(ROUND_KEYS)}, not {r!r}")
            for key in r:
                if key not in ROUND_KEYS:
                    raise UserError(f"round {k}: unknown key '{key}' (choose from: {', '.join(ROUND_KEYS)})")
            if not isinstance(r.get("eval_search", True), bool):
                raise UserError(f"round {k}: eval_search is true or false, not {r['eval_search']!r}")
        for stage in ("sft", "search", "ppm", "eval", "rl"):
            path = getattr(c, f"{stage}_recipe")
            if path is not None:
                self._recipes[stage] = load_yaml(path)  # a missing or malformed file: one line
            elif stage in ("sft", "search", "ppm") and c.rounds:
                raise UserError(f"round 1, step {stage}: no {stage}_recipe in the config")

    def _data_dir(self) -> str | None:
        return str(self.run_dir / "round_0" / "toy") if self.config.toy_data is not None else None

    def _bootstrap_data(self) -> str | None:
        return self.config.bootstrap_dataset or self._data_dir()

    def _paths(self, policy: str = "", ppm: str = "") -> dict[str, str]:
        return {
            "{run}": str(self.run_dir),
            "{data}": self._data_dir() or "",
            "{base_model}": self.base_model,
            "{policy}": policy,
            "{ppm}": ppm,
        }

    def _precision(self):
        """The Precision the stages run in (mathforge.precision), or None to keep the recipes' own."""
        from mathforge import precision

        setting = self.config.precision
        if setting == "recipe":
            return None
        if setting == "auto":
            import torch

            return None if torch.cuda.is_available() else precision.this_cpu()
        chosen = precision.this_cpu()
        bf16 = setting == "bf16"
        dtype = "bfloat16" if bf16 else "float32"
        return dataclasses.replace(chosen, train_bf16=bf16, vllm_dtype=dtype, torch_dtype=dtype)

    @property
    def precision_record(self) -> dict:
        """What the report says about the precision: the setting and what it resolved to."""
        chosen = self.precision.describe() if self.precision else "the stage recipes' own bf16 and dtype"
        return {"setting": self.config.precision, "chosen": chosen}

    def _precision_keys(self, stage: str, recipe: dict) -> dict:
        if self.precision is None:
            return {}
        if stage in TRAINERS:
            return {"bf16": self.precision.train_bf16}
        if stage in ("search", "eval"):
            vllm = stage_option(stage, recipe, "backend") == "vllm"
            return {"dtype": self.precision.vllm_dtype if vllm else self.precision.torch_dtype}
        return {}

    def _recipe(self, stage: str, wired: dict, outputs: dict, *extra: dict | None, paths: dict) -> dict:
        """recipe file < precision < wired inputs < overrides (every round, then this round's) < outputs."""
        recipe = dict(self._recipes.get(stage, {}))
        recipe.update(wired)
        layers = [self.config.overrides.get(stage) or {}, *(more or {} for more in extra)]
        for more in layers:
            recipe.update(_subst(more, paths))
        explicit = {key for more in layers for key in more}
        if self.config.seed and stage in (*TRAINERS, "eval") and "seed" not in explicit:
            recipe["seed"] = int(stage_option(stage, recipe, "seed")) + self.config.seed
        recipe.update({k: v for k, v in self._precision_keys(stage, recipe).items() if k not in explicit})
        recipe.update(outputs)  # never overridden: the done checks look there
        return recipe

    def _add(
        self, where: str, name: str, stage: str, recipe: dict, done=None, check=None, prepare=None
    ) -> Step:
        out = self.run_dir / where.replace("round ", "round_").replace("stage 2", "rl") / name
        step = Step(where, name, stage, out, recipe, done or (lambda: False), check, prepare)
        self.steps.append(step)
        return step

    # -- the steps
    def _build(self) -> None:
        c = self.config
        r0 = self.run_dir / "round_0"
        self.base_model = c.base_model or str(r0 / "base_model")
        if c.base_model is None:
            recipe = {**c.tiny_model, "output": self.base_model, "overwrite": True}
            self._add(
                "round 0",
                "base_model",
                "tiny_model",
                recipe,
                _has(r0 / "base_model", "config.json", "model.safetensors"),
            )
        data = self._data_dir()
        if data is not None:
            self._add(
                "round 0",
                "toy",
                "toy_data",
                {**c.toy_data, "output_dir": data},
                _has(Path(data), "meta.json"),
            )
        problems = c.problems_dataset or data
        eval_data = c.eval_dataset or data
        if c.rounds and problems is None:
            raise UserError("round 1, step search: no problems: set problems_dataset or toy_data")

        policy, ppm = self.base_model, ""
        bootstrap = self._bootstrap_data()
        if bootstrap is not None:
            policy = self._sft("round 0", self.base_model, bootstrap, c.bootstrap, "")
        self._eval("round 0", policy, "", eval_data, None)

        searched_trees: list[Path] = []  # every tree file of the rounds so far
        sft_sets: list[Path] = []  # every round's extracted SFT solutions so far
        for k, rnd in enumerate(c.rounds, start=1):
            where, rdir = f"round {k}", self.run_dir / f"round_{k}"
            paths = self._paths(policy, ppm)
            shape = {
                key: rnd[key] for key in ("num_rollouts", "num_candidates", "max_problems") if key in rnd
            }
            wired = {
                "model_name_or_path": policy,
                "ppm_path": ppm or None,  # round 1: terminal rewards only
                "dataset_name": problems,
                "dataset_split": c.problems_split,
                "seed": c.seed + k,
            }
            trees = rdir / "search" / "trees.jsonl"
            search = self._recipe(
                "search", wired, {"output_file": str(trees)}, shape, rnd.get("search"), paths=paths
            )
            self._add(where, "search", "search", search, _trees_cover(trees, search))
            tree_files = [str(trees)]
            searched_trees.append(trees)
            if rnd.get("unsolved_rollouts_factor") is not None:
                extra = self._unsolved_search(
                    where, rdir, search, rnd["unsolved_rollouts_factor"], list(searched_trees)
                )
                tree_files.append(extra)  # extraction: a problem's later tree replaces its earlier one
                searched_trees.append(Path(extra))
            extract_out = rdir / "extract"
            recipe = self._recipe(
                "extract", {"model_name_or_path": policy}, {"trees": tree_files, "output_dir": str(extract_out)},
                rnd.get("extract"), paths=paths,
            )  # fmt: skip
            self._add(where, "extract", "extract", recipe, _has(extract_out, "stats.json", "sft/train.jsonl", "pairs/train.jsonl"),
                      check=self._data_check(where, extract_out))  # fmt: skip
            start = self.base_model if c.sft_init == "base" else policy
            sft_sets.append(extract_out / "sft" / "train.jsonl")
            if c.sft_data == "all_rounds" and k > 1:
                policy = self._sft(where, start, str(rdir / "sft_data"), rnd.get("sft"), ppm, list(sft_sets))
            else:
                policy = self._sft(where, start, str(extract_out / "sft"), rnd.get("sft"), ppm)
            ppm_out = rdir / "ppm"
            recipe = self._recipe(
                "ppm", {"model_name_or_path": policy, "dataset_name": str(extract_out / "pairs")},
                {"output_dir": str(ppm_out)}, rnd.get("ppm"), paths=self._paths(policy, ppm),
            )  # fmt: skip
            self._add(where, "ppm", "ppm", recipe, _has(ppm_out, "model.safetensors", "ppm_metrics.json"))
            ppm = str(ppm_out)
            self._eval(where, policy, ppm, eval_data, rnd.get("eval"), search=rnd.get("eval_search", True))

        if c.rl_recipe is not None:
            paths = self._paths(policy, ppm)
            rl_out = self.run_dir / "rl" / "train"
            recipe = self._recipe(
                "rl", {"model_name_or_path": policy}, {"output_dir": str(rl_out)}, paths=paths
            )
            self._add("stage 2", "train", "rl", recipe, _has(rl_out, "model.safetensors"))
            self._eval("stage 2", str(rl_out), ppm, eval_data, None, search=False)

    def _unsolved_search(self, where: str, rdir: Path, search: dict, factor, earlier: list[Path]) -> str:
        """rStar-Math's last-round rule: search again, with ``factor`` times the round's rollouts, the round's
        problems that no search of this or an earlier round solved. Which ones is known only when the round's
        search is done, so the step writes its problem set (``problems/train.jsonl``) just before it runs."""
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
            raise UserError(f"{where}: unsolved_rollouts_factor must be a number >= 1, not {factor!r}")
        out = rdir / "search_unsolved"
        problems, trees = out / "problems" / "train.jsonl", out / "trees.jsonl"
        rollouts = max(1, round(stage_option("search", search, "num_rollouts") * factor))
        recipe = {
            **search,
            "dataset_name": str(problems.parent),
            "dataset_split": "train",
            "max_problems": None,
            "num_rollouts": rollouts,
            "output_file": str(trees),
        }

        def prepare() -> None:
            if problems.is_file():  # chosen once: a resumed search must keep its problem set
                return
            from mathforge.data.loading import load_problems
            from mathforge.search.mcts import read_tree_set

            rows = load_problems(
                search["dataset_name"],
                stage_option("search", search, "dataset_split"),
                max_problems=stage_option("search", search, "max_problems"),
            )
            solved = {
                str(t["id"])
                for path in earlier
                for t in read_tree_set(path)  # the file and any data-parallel shards beside it
                if t.get("solved")
            }
            never = [dict(r) for r in rows if str(r["id"]) not in solved]
            problems.parent.mkdir(parents=True, exist_ok=True)
            meta = {
                "round_problems": len(rows),
                "never_solved": len(never),
                "factor": factor,
                "num_rollouts": rollouts,
            }
            (out / "unsolved.json").write_text(json.dumps(meta, indent=2) + "\n")
            if not never:
                trees.touch()  # nothing to search: done, and extraction reads an empty file
            tmp = problems.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in never))
            tmp.replace(problems)

        def done() -> bool:
            if not problems.is_file():
                return False
            from mathforge.search.mcts import read_tree_set

            want = {str(json.loads(line)["id"]) for line in problems.read_text().splitlines() if line.strip()}
            return want <= {str(t["id"]) for t in read_tree_set(trees)}

        self._add(where, "search_unsolved", "search", recipe, done, prepare=prepare)
        return str(trees)

    def _sft(
        self,
        where: str,
        start: str,
        dataset: str,
        extra: dict | None,
        ppm: str,
        sets: list[Path] | None = None,
    ) -> str:
        """The SFT step; with ``sets`` (several rounds' SFT files), ``dataset`` is a folder that the step fills
        with their concatenation just before it runs (the rounds' extractions exist only by then)."""
        out = self.run_dir / where.replace("round ", "round_") / "sft"
        recipe = self._recipe(
            "sft", {"model_name_or_path": start, "dataset_name": dataset}, {"output_dir": str(out)}, extra,
            paths=self._paths(start, ppm),
        )  # fmt: skip

        def concatenate() -> None:
            target = Path(dataset) / "train.jsonl"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            with tmp.open("w") as f:
                for path in sets:
                    text = path.read_text()
                    f.write(text if text.endswith("\n") or not text else text + "\n")
            tmp.replace(target)

        self._add(where, "sft", "sft", recipe, _has(out, "model.safetensors", "recipe.yaml"),
                  prepare=concatenate if sets else None)  # fmt: skip
        return str(out)

    def _eval(self, where: str, policy: str, ppm: str, dataset: str | None, extra: dict | None, search=True):
        if self.config.eval_recipe is None:
            return
        folder = self.run_dir / where.replace("round ", "round_").replace("stage 2", "rl")
        wired = {"model_name_or_path": policy}
        if dataset is not None:
            wired.update(dataset_name=dataset, dataset_split=self.config.eval_split, benchmarks=None)
        if self.config.eval_problems is not None:
            wired["max_problems"] = self.config.eval_problems
        paths = self._paths(policy, ppm)
        greedy = {"n": 1, "temperature": 0.0, "search": "none", "progress": True}  # its bar: the live line
        out = folder / "eval_greedy"
        recipe = self._recipe("eval", wired, {"output_dir": str(out)}, greedy, extra, paths=paths)
        self._add(where, "eval_greedy", "eval", recipe, _has(out, "results.json"))
        if search and ppm and self.config.eval_search is not None:
            out = folder / "eval_search"
            wired_search = {**wired, "ppm_path": ppm, "n": 1, "progress": True}
            recipe = self._recipe(
                "eval", wired_search, {"output_dir": str(out)}, extra, self.config.eval_search, paths=paths
            )
            self._add(where, "eval_search", "eval", recipe, _has(out, "results.json"))

    @staticmethod
    def _data_check(where: str, extract_out: Path) -> Callable[[], None]:
        def check() -> None:
            stats = json.loads((extract_out / "stats.json").read_text())
            if not stats.get("sft_rows"):
                raise UserError(
                    f"{where}, step extract: the search produced no data (coverage {stats.get('coverage', 0)}% of "
                    f"{stats.get('problems', 0)} problems, no correct trajectory, so no SFT example); raise "
                    "num_rollouts or the bootstrap SFT, or search easier problems"
                )
            if not stats.get("pairs"):
                raise UserError(
                    f"{where}, step extract: the search produced no preference pairs (coverage "
                    f"{stats.get('coverage', 0)}%: no node with both a correct and a wrong leaf), so no PPM "
                    "can be trained; raise num_rollouts or num_candidates"
                )

        return check

    def validate(self) -> None:
        """Check every step's recipe keys against the options its stage parses (imports the stage modules)."""
        from mathforge.config import check_keys

        for step in self.steps:
            name = CLI_NAMES.get(step.stage, step.stage)
            try:
                check_keys(step.recipe, stage_types(step.stage, step.recipe), f"for `mathforge {name}`")
            except UserError as err:
                raise UserError(f"{step.label}: {err}") from None


def stage_types(stage: str, recipe: dict | None = None) -> list[type]:
    """The option dataclasses that `mathforge <stage>` parses for ``recipe``, imported from the stage.

    A stage that cannot be imported is a UserError: its recipe can be neither checked nor run."""
    name = CLI_NAMES.get(stage, stage)
    try:
        return _stage_types(stage, recipe or {})
    except ImportError as err:
        raise UserError(
            f"`mathforge {name}` cannot be imported ({err}); install mathforge with scripts/install.sh"
        ) from None


def stage_option(stage: str, recipe: dict, key: str):
    """A step recipe's value of ``key``, else the default of that option of the stage."""
    if key in recipe:
        return recipe[key]
    for option in (f for t in stage_types(stage, recipe) for f in dataclasses.fields(t) if f.name == key):
        return option.default if option.default is not dataclasses.MISSING else option.default_factory()
    raise KeyError(f"{key} is no option of `mathforge {CLI_NAMES.get(stage, stage)}`")


def _stage_types(stage: str, recipe: dict) -> list[type]:
    if stage not in MODULES:
        raise KeyError(f"no stage {stage!r} (stages: {', '.join(MODULES)})")
    return importlib.import_module(MODULES[stage]).config_types(recipe)


# --- running -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _output_to(log: Path, console: bool):
    """Send this process's stdout and stderr (file descriptors: C libraries and subprocesses too) to `log`."""
    if console:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def runs_in_own_process(stage: str, config: EvolveConfig) -> bool:
    """Whether a stage is launched with accelerate or listed in ``subprocess`` (else it runs in evolve's process)."""
    return stage in config.accelerate or stage in config.subprocess or "all" in config.subprocess


def command(step: Step, config: EvolveConfig, nodes: Nodes = ONE_NODE) -> list[str] | None:
    """The command line of a step run in its own process, or None to run it in this one. On several nodes a
    launched stage gets this node's place in the job (:meth:`Nodes.launch_args`)."""
    if not runs_in_own_process(step.stage, config):
        return None
    recipe = str(step.out / "step_recipe.yaml")
    module = MODULES[step.stage]
    if step.stage in config.accelerate:
        accelerate = config.accelerate[step.stage]
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate,
                *nodes.launch_args(accelerate), "-m", module, "--config", recipe]  # fmt: skip
    return [sys.executable, "-m", module, "--config", recipe]


ATTEMPT = "\n=== "  # starts the header line of each attempt in a step's log


def _last_error(log: Path) -> str:
    """The last error line of the step's latest attempt (the log is appended to, one ``=== `` header per
    attempt). Of a launched stage, the ranks' own error, not the launcher's ChildFailedError summary below it."""
    text = log.read_text(errors="replace")
    attempt = text.rsplit(ATTEMPT, 1)[1].splitlines()[1:] if ATTEMPT in text else text.splitlines()
    lines = [re.sub(r"^\[rank\d+\]:\s*", "", line.strip()) for line in attempt if line.strip()]
    launcher = next((i for i, line in enumerate(lines) if "ChildFailedError" in line), len(lines))
    for candidates in (lines[:launcher], lines):
        errors = [line for line in candidates if "error:" in line.lower() or "Error" in line.split(":")[0]]
        if errors:
            return errors[-1]
    return (lines or ["no output"])[-1]


def run_step(step: Step, config: EvolveConfig, nodes: Nodes = ONE_NODE) -> None:
    """Run one stage with its step recipe; any failure becomes a one-line UserError naming the step.
    Node 0 writes the step's recipe and command; another node launches from them, logging to its own file."""
    step.out.mkdir(parents=True, exist_ok=True)
    recipe_file = step.out / "step_recipe.yaml"
    log = step.out / ("step.log" if nodes.leads else f"step.node{nodes.machine_rank}.log")
    cmd = command(step, config, nodes)
    threads = {"OMP_NUM_THREADS": str(config.threads[step.stage])} if step.stage in config.threads else {}
    shown = cmd or ["mathforge", *CLI_NAMES.get(step.stage, step.stage).split(), "--config", str(recipe_file)]
    shown = [f"{k}={v}" for k, v in threads.items()] + shown
    if nodes.leads:
        save_yaml(step.recipe, recipe_file)
        (step.out / "step_command.sh").write_text(shlex.join(shown) + "\n")
    with open(log, "a") as f:
        f.write(f"{ATTEMPT}{time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(shown)}\n")
    if cmd is not None:
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **threads}
        with open(log, "ab") as f:
            target = None if config.log_to_console else f
            proc = subprocess.Popen(cmd, stdout=target, stderr=target, env=env, preexec_fn=die_with_parent)
            try:
                rc = proc.wait()
            except BaseException:  # Ctrl-C or SIGTERM: a stage left running would race the re-run
                proc.terminate()
                proc.wait()
                raise
        if rc != 0:
            raise UserError(f"{step.label}: {_last_error(log)} (exit code {rc}; log: {log})")
        return
    try:
        module = importlib.import_module(MODULES[step.stage])
        with _output_to(log, config.log_to_console):
            module.main(["--config", str(recipe_file)])
    except UserError as err:
        raise UserError(f"{step.label}: {err}") from None
    except ImportError as err:
        raise UserError(f"{step.label}: stage {step.stage} is not available ({err})") from None
    except Exception as err:  # a crash in a stage: the traceback goes to its log, one line here
        with open(log, "a") as f:
            traceback.print_exc(file=f)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"{step.label}: {type(err).__name__}: {first} (traceback in {log})") from None
    finally:
        gc.collect()  # a stage's models (and vLLM engine) are unreachable now: free them before the next


def _changed_keys(step: Step) -> list[str]:
    """Keys whose value in the step's saved ``step_recipe.yaml`` differs from the recipe planned now."""
    saved_file = step.out / "step_recipe.yaml"
    if not saved_file.is_file():
        return []
    saved = yaml.safe_load(saved_file.read_text()) or {}
    planned = yaml.safe_load(yaml.safe_dump(step.recipe))  # the same YAML round trip as the saved one
    return sorted(k for k in set(saved) | set(planned) if not _same_value(saved.get(k), planned.get(k)))


def _same_value(a, b) -> bool:
    """Equal, or the same path written differently (relative, absolute, with ``~``), or paths that differ
    only above the run folder (a run moved or copied elsewhere)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, str) and isinstance(b, str) and a != b and _path_like(a) and _path_like(b):
        a_path, b_path = (Path(v).expanduser().resolve() for v in (a, b))
        return a_path.parts[-2:] == b_path.parts[-2:]  # <round_k>/<step> (or <step>/<file>)
    return a == b


def _path_like(value: str) -> bool:
    """One line with a folder separator, or starting with ``~`` (a prompt with a ``/`` in it is no path)."""
    return "\n" not in value and (value.startswith("~") or "/" in value or os.sep in value)


def _record_time(run_dir: Path, step: Step, seconds: float) -> None:
    path = run_dir / "timings.json"
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings[step.label] = round(timings.get(step.label, 0.0) + seconds, 1)  # a resumed step adds up
    write_atomic(path, json.dumps(timings, indent=2) + "\n")


def _console_fd() -> int | None:
    """A copy of this process's stdout descriptor (kept while a step sends fd 1 to its log), or None."""
    try:
        return os.dup(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a captured or closed stdout
        return None


def evolve(config: EvolveConfig, echo: Callable[[str], None] = print, live: bool | None = None) -> dict:
    """Run (or continue) every step of the plan, then write the report; returns report.json's content.

    live: show a live status line of the running step on stdout (default: when ``echo`` is ``print`` and
    the stages' output goes to their logs)."""
    from mathforge.evolve_report import write_report

    plan = Plan(config)
    plan.validate()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    nodes = nodes_from_env()
    if not nodes.leads:
        return _follow(plan, nodes, echo)
    if nodes.many:
        echo(
            f"[evolve] node 0 of {nodes.num_machines}: serving the step store at {nodes.main_addr}:{nodes.evolve_port}"
        )
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(dataclasses.asdict(config), plan.run_dir / "evolve.yaml")
    if live is None:
        live = echo is print and not config.log_to_console
    console = _console_fd() if live else None
    started = time.perf_counter()
    try:
        with NodeSync(nodes) if nodes.many else contextlib.nullcontext() as sync:
            _run_steps(plan, config, echo, console, sync)
            report = write_report(plan.run_dir, plan)
            if sync is not None:
                sync.finish()  # the followers may still be reading the last step's word from this store
    finally:
        if console is not None:
            os.close(console)
    echo(
        f"[evolve] finished in {(time.perf_counter() - started) / 60:.1f} min; report: {plan.run_dir / 'report.md'}"
    )
    return report


def _follow(plan: Plan, nodes: Nodes, echo: Callable[[str], None]) -> dict:
    """Node k > 0: wait for node 0's word on each step; launch the launched ones here too, skip the rest."""
    rank = nodes.machine_rank
    echo(
        f"[evolve] node {rank} of {nodes.num_machines}: following node 0 at {nodes.main_addr}:{nodes.evolve_port}"
    )
    with NodeSync(nodes) as sync:
        for index, step in enumerate(plan.steps, start=1):
            order = sync.hear(f"step {index}")
            if order == "launch":
                echo(
                    f"[evolve] node {rank}: {step.label}: launching (log: {step.out / f'step.node{rank}.log'})"
                )
                run_step(step, plan.config, nodes)
                sync.hear(f"ended {index}")  # node 0's rank 0 may still be writing the outputs
            if order != "skip" and not step.done():
                raise UserError(
                    f"{step.label}: node 0 finished it but its outputs are not visible on node {rank} in "
                    f"{step.out}: the run folder must be on a file system all nodes share"
                )
        sync.finish()
    echo(f"[evolve] node {rank}: every step finished; the report is written by node 0 in {plan.run_dir}")
    return {"table": f"(node {rank}: see node 0's report in {plan.run_dir / 'report.md'})"}


def _run_steps(
    plan: Plan,
    config: EvolveConfig,
    echo: Callable[[str], None],
    console: int | None,
    sync: NodeSync | None = None,
) -> None:
    """Run the plan's unfinished steps here; with ``sync`` (node 0 of several) tell the other nodes each step's fate."""
    from mathforge.evolve_progress import LiveLine

    nodes = sync.nodes if sync is not None else ONE_NODE

    total, announced = len(plan.steps), False
    for index, step in enumerate(plan.steps, start=1):
        if step.prepare is not None:
            step.prepare()
        if step.done():
            if sync is not None:
                sync.tell(f"step {index}", "skip")
            echo(f"[evolve] {step.label}: done already ({step.out})")
            changed = _changed_keys(step)
            if changed:
                echo(
                    f"[evolve] WARNING: {step.label} was finished with a different recipe (changed: "
                    f"{', '.join(changed)}); its outputs are kept. Delete {step.out} (and the steps after "
                    "it) to run it again."
                )
        else:
            if not announced and plan.precision is not None:
                echo(f"[evolve] precision: {plan.precision.describe()}")
            announced = True
            name = CLI_NAMES.get(step.stage, step.stage)
            echo(f"[evolve] {step.label}: running `mathforge {name}` (log: {step.out / 'step.log'})")
            t0 = time.perf_counter()
            shown = (
                LiveLine(console, f"[evolve] {index}/{total} {step.label}", step.out / "step.log")
                if console is not None
                else contextlib.nullcontext()
            )
            launched = sync is not None and step.stage in config.accelerate
            if launched:
                sync.tell(f"step {index}", "launch")  # every node launches its part of the job now
            try:
                with shown:
                    run_step(step, config, nodes)
            finally:
                _record_time(plan.run_dir, step, time.perf_counter() - t0)
            echo(f"[evolve] {step.label}: finished in {time.perf_counter() - t0:.0f}s")
            if not step.done():
                raise UserError(
                    f"{step.label}: the stage ended without its outputs in {step.out} (see step.log)"
                )
            if sync is not None:
                sync.tell(f"ended {index}" if launched else f"step {index}", "done")
        if step.check is not None:
            step.check()


def parse_args(argv: list[str] | None) -> EvolveConfig:
    """`--config` + overrides; a mapping/list field's value on the command line is parsed as YAML."""
    from mathforge.config import parse_config

    argv = list(sys.argv[1:] if argv is None else argv)
    structured: dict = {}
    rest, i = [], 0
    while i < len(argv):
        key = argv[i][2:].replace("-", "_") if argv[i].startswith("--") else None
        if key in STRUCTURED and i + 1 < len(argv):
            try:
                structured[key] = yaml.safe_load(argv[i + 1])
            except yaml.YAMLError:
                raise UserError(f"--{key}: not a YAML/JSON value: {argv[i + 1]}") from None
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    (config,) = parse_config([EvolveConfig], rest, prog="mathforge evolve")
    for key, value in structured.items():
        setattr(config, key, value)
    for name in ("overrides", "accelerate", "bootstrap"):
        if not isinstance(getattr(config, name), dict):
            raise UserError(f"{name} must be a mapping, not {getattr(config, name)!r}")
    if not isinstance(config.rounds, list):
        raise UserError(f"rounds must be a list of mappings, not {config.rounds!r}")
    return config


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through run_step, which stops a stage's process first


def main(argv: list[str] | None = None) -> dict:
    import threading

    config = parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        report = evolve(config)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print()
    print(report["table"])
    return report


if __name__ == "__main__":
    from mathforge.cli import run_main

    sys.exit(run_main(main, sys.argv[1:], "mathforge evolve"))
