"""Shared fixtures: paths to the real benchmark files (read in place) and a tiny model built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(os.environ.get("MATHFORGE_BENCHMARKS", REPO.parent / "shared" / "benchmarks"))


@pytest.fixture(scope="session")
def benchmarks() -> Path:
    """The benchmark JSONL files (math500, gsm8k_test, ...): $MATHFORGE_BENCHMARKS, else ../shared/benchmarks.
    A clone without them skips the tests on real data, saying how to get them."""
    if not (BENCHMARKS / "math500.jsonl").exists():
        pytest.skip(
            f"benchmark files not found in {BENCHMARKS}: set MATHFORGE_BENCHMARKS to a folder with math500.jsonl, "
            "gsm8k_test.jsonl, aime24.jsonl, amc23.jsonl (the Hub datasets of mathforge.eval.benchmarks, as JSONL)"
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
