"""A very small but real `mathforge evolve` run, shared by test_evolve.py and test_push.py.

The micro model (0.2M parameters) is bootstrapped on 8 level-1 toy problems until it reproduces their
teacher solutions, then searches those same problems at temperature 0.8: enough correct and wrong
leaves for real SFT data and preference pairs in seconds. Every stage is the real one (TRL trainers,
the sandboxed executor, the transformers generator); only the step counts are tiny. Its held-out
accuracy is not the point here (the demo recipe, recipes/tiny/evolve.yaml, is where numbers matter).

`finished_run` is cheap to call again: evolve is resumable, so a second call only checks the outputs.
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def micro_config(runs_dir: Path, name: str = "micro", **changes) -> dict:
    config = {
        "name": name,
        "runs_dir": str(runs_dir),
        "tiny_model": {"size": "micro", "seed": 0},
        # no re-check step: with it (one that copies the problem), the micro model solved each problem either
        # always or never, so its search left no node with both a correct and a wrong leaf (no pairs)
        "toy_data": {"n_train": 8, "n_test": 8, "seed": 0, "levels": [1], "recheck_rate": 0.0},
        "eval_problems": 4,
        "rounds": [{"num_rollouts": 16, "num_candidates": 4, "max_problems": 8}],
        "sft_recipe": str(REPO / "recipes/tiny/sft/config_toy.yaml"),
        "search_recipe": str(REPO / "recipes/tiny/search/config_round1.yaml"),
        "ppm_recipe": str(REPO / "recipes/tiny/ppm/config_toy.yaml"),
        "eval_recipe": str(REPO / "recipes/tiny/eval/config_toy.yaml"),
        "overrides": {
            "sft": {"max_steps": 10, "per_device_train_batch_size": 8, "save_steps": 5, "disable_tqdm": True},
            # batch_problems 2: trees finish (and are written) one pair at a time, so a kill lands mid-search
            "search": {"backend": "transformers", "temperature": 1.0, "batch_problems": 2},
            # 0.3 holds out one of the two problems whose trees give pairs (hash-based). mathforge.ppm fails
            # when every problem is held out (it then has no training pair), hence not 0.5.
            "ppm": {
                "max_steps": 4,
                "per_device_train_batch_size": 8,
                "eval_fraction": 0.3,
                "disable_tqdm": True,
            },
            "eval": {"backend": "transformers", "max_steps": 6},
        },
        # The tiny SFT recipe uses beta2 0.95 (best for the demo); this 8-problem run is tuned to TRL's 0.999,
        # which leaves the micro model right on some samples and wrong on others: both are needed for
        # preference pairs. Precision is evolve's `auto` (bf16 autocast only on a CPU with AMX).
        "bootstrap": {"max_steps": 250, "warmup_steps": 10, "save_strategy": "no", "adam_beta2": 0.999},
        "eval_search": {"search": "best_of_n", "search_n": 2, "temperature": 0.7},
        "sft_init": "previous",
    }
    config.update(changes)
    return config


def write_config(config: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def finished_run(root: Path) -> Path:
    """The run folder of a complete micro evolve run under ``root`` (run once, then only re-checked)."""
    from mathforge.evolve import main

    config = write_config(micro_config(root / "runs"), root / "micro.yaml")
    main(["--config", str(config)])
    return root / "runs" / "micro"
