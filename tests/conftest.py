"""Shared fixtures: the real benchmark files (read in place), a tiny model and toy data built once, and the
tiny model after a real SFT, trained once and shared by the tests that need a policy that writes steps.

The benchmark files are JSONL copies of public data, one JSON object per line, found in
``$MATHFORGE_BENCHMARKS``, else ``../shared/benchmarks`` beside the repository:

- ``math500.jsonl``: MATH-500, ``examples/simplelr_math_eval/data/math500/test.jsonl`` of
  hkust-nlp/simpleRL-reason (byte-identical to ``math_splits/test.jsonl`` of openai/prm800k) with ``unique_id``
  renamed ``id``.
- ``gsm8k_test.jsonl``: ``grade_school_math/data/test.jsonl`` of openai/grade-school-math as ``id``
  (``gsm8k-test-<line>``), ``question``, ``answer_text`` (the upstream ``answer``) and ``answer`` (the number
  after ``####``, thousands commas removed).
- ``aime24.jsonl``, ``amc23.jsonl``: ``evaluation/data/{aime24,amc23}/test.jsonl`` of QwenLM/Qwen2.5-Math as
  ``id`` (from the AoPS ``url``, e.g. ``2024-AIMEI-P1``), ``problem`` and ``answer`` (an integer string).

Without them the tests on real data skip, saying so; everything else runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(os.environ.get("MATHFORGE_BENCHMARKS") or REPO.parent / "shared" / "benchmarks")
BENCHMARK_FILES = ("math500.jsonl", "gsm8k_test.jsonl", "aime24.jsonl", "amc23.jsonl")


@pytest.fixture(scope="session")
def benchmarks() -> Path:
    """The folder of the benchmark files: $MATHFORGE_BENCHMARKS, else ../shared/benchmarks. Without all of
    them, the test skips with a reason that names the missing files and where to read how to get them."""
    missing = [name for name in BENCHMARK_FILES if not (BENCHMARKS / name).is_file()]
    if missing:
        pytest.skip(
            f"benchmark files not found in {BENCHMARKS}: {', '.join(missing)}. Set MATHFORGE_BENCHMARKS to a "
            "folder with JSONL copies of MATH-500, GSM8K test, AIME 2024 and AMC 2023 (their sources and "
            "columns: tests/conftest.py)"
        )
    return BENCHMARKS


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The default tiny model, built once per test session (seconds, nothing downloaded)."""
    from mathforge.tiny_model import build

    return build(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    """A small toy dataset (train/test JSONL with executed teacher solutions)."""
    from mathforge.data.toy import write_dataset

    out = tmp_path_factory.mktemp("data") / "toy"
    write_dataset(out, n_train=400, n_test=40, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def sft_policy(tiny_model, toy_data, tmp_path_factory) -> Path:
    """The output folder of a real `mathforge sft` of the tiny model on the toy teacher solutions
    (recipes/tiny/sft/config_toy.yaml, 300 steps of 8, loss logged every 25 steps, one checkpoint at 300),
    run once per session. test_sft checks that run; test_rl and test_cluster start RL from it, a policy
    that writes steps whose code runs. Tests only read it; one that resumes its training works on a copy."""
    from mathforge.sft import main

    out = tmp_path_factory.mktemp("sft-policy") / "run"
    main(
        [
            "--config", str(REPO / "recipes/tiny/sft/config_toy.yaml"), "--model_name_or_path", str(tiny_model),
            "--dataset_name", str(toy_data), "--output_dir", str(out), "--max_steps", "300",
            "--per_device_train_batch_size", "8", "--logging_steps", "25", "--save_steps", "300",
            "--warmup_steps", "20", "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    return out
