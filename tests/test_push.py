"""`mathforge push`: the dry-run folders of a policy, a PPM and the search datasets, checked offline with
huggingface_hub's card classes; one-line errors without a token or network.

The models and data are the real outputs of a micro `mathforge evolve` run (evolve_helpers.py). The Hub
is the only thing faked (`fake_hub`), to check that a push uploads the dry-run folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from evolve_helpers import REPO, finished_run
from fake_hub import fake_hub, files_in

from mathforge.errors import UserError
from mathforge.push import main as push

pytestmark = pytest.mark.slow  # the micro evolve run takes a few minutes the first time


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return finished_run(tmp_path_factory.getbasetemp() / "micro-evolve")  # shared with test_evolve.py


def test_policy_dry_run_folder_and_card(run, tmp_path):
    from huggingface_hub import ModelCard, ModelCardData
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = push(
        [
            "--model_dir",
            str(run / "round_1/sft"),
            "--repo_id",
            "me/micro-policy",
            "--dry_run",
            str(tmp_path / "up"),
        ]
    )
    files = files_in(out)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "recipes/recipe.yaml",
                 "recipes/step_recipe.yaml", "recipes/evolve.yaml", "eval/eval_greedy/results.json",
                 "eval/eval_search/results.json"):  # fmt: skip
        assert name in files, name
    assert not any(
        f.startswith(("checkpoint-", "ranks/")) or f in ("step.log", "training_args.bin") for f in files
    )

    card = ModelCard.load(out / "README.md")
    data = card.data
    assert (
        data.license == "apache-2.0"
        and data.pipeline_tag == "text-generation"
        and data.library_name == "transformers"
    )
    assert data.base_model is None  # built locally: no Hub id to name; the text says so
    assert (
        "built locally" in card.text and "## How to use" in card.text and "recipes/evolve.yaml" in card.text
    )
    greedy = json.loads((run / "round_1/eval_greedy/results.json").read_text())
    search = json.loads((run / "round_1/eval_search/results.json").read_text())
    accuracy = {e.metric_name: e.metric_value for e in data.eval_results if e.metric_type == "accuracy"}
    assert accuracy == {
        "pass@1 (greedy)": greedy["accuracy"],
        "pass@1 (search=best_of_n)": search["accuracy"],
    }
    index = data.to_dict()["model-index"]
    assert index[0]["name"] == "micro-policy"
    assert sum(len(r["metrics"]) for r in index[0]["results"]) == len(data.eval_results) == 4
    # metadata round trip through the card classes: valid model-index, same results
    again = ModelCardData(**data.to_dict())
    assert [(e.metric_name, e.metric_value) for e in again.eval_results] == [
        (e.metric_name, e.metric_value) for e in data.eval_results
    ]
    # the uploaded folder is a loadable model
    AutoTokenizer.from_pretrained(out)
    AutoModelForCausalLM.from_pretrained(out)


def test_ppm_dry_run_card_has_pairwise_accuracy(run, tmp_path):
    from huggingface_hub import ModelCard

    from mathforge.ppm import load_scorer

    out = push(["--model_dir", str(run / "round_1/ppm"), "--repo_id", "me/micro-ppm", "--dry_run", str(tmp_path / "up"),
                "--base_model", "Qwen/Qwen2.5-Math-1.5B", "--license", "mit"])  # fmt: skip
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "text-classification" and card.data.license == "mit"
    assert card.data.base_model == "Qwen/Qwen2.5-Math-1.5B"
    metrics = json.loads((run / "round_1/ppm/ppm_metrics.json").read_text())
    if "eval_pairwise_accuracy" in metrics:  # none when no problem with pairs was held out (tiny run)
        (result,) = card.data.eval_results
        assert result.metric_value == round(100 * metrics["eval_pairwise_accuracy"], 2)
        assert result.metric_name == "pairwise accuracy" and result.task_type == "text-classification"
    else:
        assert card.data.eval_results is None
    assert "load_scorer" in card.text
    scorer = load_scorer(str(out), device="cpu")
    assert -1.0 <= scorer(["<|im_start|>user\n1+1<|im_end|>\n"])[0] <= 1.0


def test_dataset_dry_run_folder_and_card(run, tmp_path):
    import datasets
    from huggingface_hub import DatasetCard

    extract = run / "round_1/extract"
    out = push(
        ["--dataset_dir", str(extract), "--repo_id", "me/micro-data", "--dry_run", str(tmp_path / "up")]
    )
    assert files_in(out) == {"README.md", "stats.json", "recipes/search.yaml", "sft/train.jsonl",
                             "pairs/train.jsonl", "values/train.jsonl"}  # fmt: skip
    card = DatasetCard.load(out / "README.md")
    assert [c["config_name"] for c in card.data.configs] == ["sft", "pairs", "values"]
    assert card.data.license == "apache-2.0" and card.data.size_categories == "n<1K"
    stats = json.loads((extract / "stats.json").read_text())
    assert f"| pairs | {stats['pairs']} |" in card.text
    # the folder loads as the Hub would serve it: configurations from the card's metadata
    # own cache: the global one is keyed by path and may hold an earlier run's folder of the same name
    pairs = datasets.load_dataset(str(out), "pairs", split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert len(pairs) == stats["pairs"] and {"prompt", "chosen", "rejected"} <= set(pairs.column_names)


def test_bad_input_is_one_line(run, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    cases = [
        (["--model_dir", str(run / "round_1/sft"), "--repo_id", "me/x", "--dry_run", str(tmp_path / "full")], "not empty"),
        (["--model_dir", str(run / "round_1/sft"), "--dataset_dir", str(run), "--repo_id", "me/x"], "exactly one"),
        (["--model_dir", str(run / "round_1/sft"), "--repo_id", "noslash"], "owner/name"),
        (["--model_dir", str(run / "round_1/search"), "--repo_id", "me/x", "--dry_run", str(tmp_path / "a")], "no model"),
        (["--dataset_dir", str(run / "round_1/sft"), "--repo_id", "me/x", "--dry_run", str(tmp_path / "b")], "no data"),
        (["--model_dir", str(tmp_path / "missing"), "--repo_id", "me/x"], "folder not found"),
    ]  # fmt: skip
    for argv, message in cases:
        with pytest.raises(UserError, match=message) as err:
            push(argv)
        assert "\n" not in str(err.value)


def _cli(argv: list[str], **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    environment.update(PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "mathforge.cli", "push", *argv], capture_output=True, text=True,
                          env=environment, timeout=300)  # fmt: skip


def test_no_token_and_no_network_are_one_line_errors(run, tmp_path):
    argv = ["--model_dir", str(run / "round_1/sft"), "--repo_id", "me/micro-policy"]
    # no token anywhere (an empty HF_HOME has no stored login)
    done = _cli(argv, HF_HOME=str(tmp_path / "hf"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "no Hugging Face token" in done.stderr and "Traceback" not in done.stderr
    # a token but no network (offline mode, and an endpoint nobody listens on)
    done = _cli(argv, HF_HOME=str(tmp_path / "hf"), HF_TOKEN="hf_not_a_real_token", HF_HUB_OFFLINE="1",
                HF_ENDPOINT="http://127.0.0.1:9")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "could not push to me/micro-policy" in done.stderr


def test_push_uploads_exactly_the_dry_run_folder(run, tmp_path, monkeypatch):
    hub = fake_hub(monkeypatch, tmp_path)
    dry = push(
        [
            "--dataset_dir",
            str(run / "round_1/extract"),
            "--repo_id",
            "me/micro-data",
            "--dry_run",
            str(tmp_path / "d"),
        ]
    )
    url = push(
        ["--dataset_dir", str(run / "round_1/extract"), "--repo_id", "me/micro-data", "--token", "hf_fake"]
    )
    assert url == "https://huggingface.co/me/micro-data"
    assert hub.calls[0] == ("create_repo", "me/micro-data", "dataset", True)
    assert hub.calls[1] == ("upload_folder", "me/micro-data", "dataset", files_in(dry))
