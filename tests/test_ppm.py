"""The PPM stage on real tiny models with TRL's RewardTrainer: learning, the score convention, resume, errors.

Pairs come from the toy teacher solutions (scripts/ppm_accuracy.py builds them): chosen = the teacher's
step with its output, rejected = the same step with a variable misspelt and the NameError it really
raises, same prefix. A randomly initialised model learns that difference in a few dozen CPU steps; the
subtler corruptions (a wrong number or operator, no error) need far more training than a test affords.
"""

import json
import sys
from pathlib import Path

import pytest
import yaml
from fake_hub import fake_hub, files_in
from weights import weights_moved

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from ppm_accuracy import toy_pairs  # noqa: E402

STEPS = 20


def ppm_args(model, data, out, *extra):
    return [
        "--config", str(REPO / "recipes/tiny/ppm/config_toy.yaml"),
        "--model_name_or_path", str(model),
        "--dataset_name", str(data),
        "--output_dir", str(out),
        *extra,
    ]  # fmt: skip


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def micro_model(tiny_model, tmp_path_factory):
    """The micro size (0.2M parameters: fast steps) on the tiny model's tokenizer (none to train again)."""
    from transformers import AutoTokenizer

    from mathforge.tiny_model import build_model

    out = tmp_path_factory.mktemp("models") / "micro"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    build_model(tokenizer, size="micro", seed=0).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def pairs(micro_model, toy_data, tmp_path_factory):
    """train.jsonl from the toy train split, test.jsonl (held out) from the toy test split."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_model)
    out = tmp_path_factory.mktemp("pairs")
    for split, seed in (("train", 0), ("test", 1)):
        rows = [json.loads(line) for line in (toy_data / f"{split}.jsonl").read_text().splitlines()]
        write_jsonl(
            out / f"{split}.jsonl", toy_pairs(rows, tok, seed=seed, kinds=("name",), final=False, max_depth=2)
        )
    return out


@pytest.fixture(scope="module")
def trained(micro_model, pairs, tmp_path_factory):
    from mathforge.ppm import main

    out = tmp_path_factory.mktemp("ppm") / "run"
    main(
        ppm_args(
            micro_model, pairs, out, "--dataset_test_split", "test", "--max_steps", str(STEPS),
            "--save_steps", str(STEPS), "--logging_steps", "2",
        )
    )  # fmt: skip
    return out


def read_pairs(path: Path, n: int | None = None) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[:n]]


@pytest.mark.slow
def test_ppm_learns_held_out_pairs(trained, pairs, micro_model):
    # every weight of the policy it started from moved (no weight decay: only the gradient moves one)
    assert yaml.safe_load((trained / "recipe.yaml").read_text())["weight_decay"] == 0
    moved = weights_moved(micro_model, trained)
    assert len(moved) > 10 and all(moved.values()), [name for name, m in moved.items() if not m]
    state = json.loads((trained / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) >= 10
    # BT loss starts at log 2 = 0.69 and stays there without learning (no update, a read-out token that
    # cannot see the step); it fell to ~0.06 when this was written.
    assert sum(losses[-3:]) / 3 < 0.4 * losses[0], losses
    metrics = json.loads((trained / "ppm_metrics.json").read_text())
    # An untrained micro model scored 0.22 on such pairs (a random head ranks them mostly one way, so
    # the loss check above is what rules out luck); a flipped sign would drive this towards 0; ~0.98 trained.
    assert metrics["eval_pairs"] == len(read_pairs(pairs / "test.jsonl")) >= 100
    assert metrics["eval_pairwise_accuracy"] >= 0.8, metrics
    assert json.loads((trained / "eval_results.json").read_text())["eval_pairwise_accuracy"] == pytest.approx(
        metrics["eval_pairwise_accuracy"]
    )


@pytest.mark.slow
def test_saved_artifacts(trained):
    for name in ("model.safetensors", "tokenizer.json", "recipe.yaml", "README.md", "ppm_metrics.json"):
        assert (trained / name).exists(), name
    config = json.loads((trained / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"] and len(config["id2label"]) == 1
    assert config["pad_token_id"] is not None  # the seq-cls head finds the last token with it
    recipe = yaml.safe_load((trained / "recipe.yaml").read_text())
    assert recipe["objective"] == "pairwise" and recipe["max_steps"] == STEPS
    assert (trained / "ranks" / "rank_0.json").exists()


@pytest.mark.slow
def test_scorer_follows_the_training_convention(trained, pairs, tmp_path):
    """The scorer search uses orders pairs exactly as the head scored them in training, in [-1, 1]."""
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from mathforge.ppm import load_scorer, pair_margins

    test = read_pairs(pairs / "test.jsonl", 48)
    scorer = load_scorer(str(trained), batch_size=7, device="cpu")
    # r as training computes it: RewardTrainer's own tokenisation (prompt + chosen + EOS) and collator.
    args = RewardConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_length=None)
    trainer = RewardTrainer(model=scorer.model, args=args, train_dataset=Dataset.from_list(test),
                            processing_class=scorer.tokenizer)  # fmt: skip
    batch = trainer.data_collator(list(trainer.train_dataset))
    with torch.no_grad():
        raw = scorer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    train_chosen, train_rejected = raw.squeeze(-1).double().chunk(2)
    scores = scorer.score_pairs(
        [p["prompt"] for p in test], [p["chosen"] for p in test], [p["rejected"] for p in test]
    )
    chosen = torch.tensor([c for c, _ in scores], dtype=torch.float64)
    rejected = torch.tensor([r for _, r in scores], dtype=torch.float64)
    assert all(-1.0 <= s <= 1.0 for pair in scores for s in pair)
    assert torch.equal(chosen > rejected, train_chosen > train_rejected)  # same pairs, same winners
    assert torch.allclose(chosen, torch.tanh(train_chosen), atol=1e-5)
    assert torch.equal(pair_margins(raw) > 0, train_chosen > train_rejected)
    # Padding does not change a score: a batch of mixed lengths equals one text at a time.
    texts = [p["prompt"] + p["chosen"] for p in test[:12]]
    assert scorer(texts) == pytest.approx([scorer([t])[0] for t in texts], abs=1e-5)
    # A prefix past the model's positions (long executor outputs) is scored on its last tokens, not a crash.
    limit = scorer.model.config.max_position_embeddings
    tail = texts[0] + "<step>\nx = 1\nprint(x)\n</step>\n<output>\n1\n</output>\n" * (limit // 8)
    long_a, long_b = "a b c " * limit + tail, "z y " * limit + tail
    assert len(scorer.tokenizer(long_a)["input_ids"]) > limit
    a, b = scorer([long_a, long_b])
    assert -1.0 <= a <= 1.0 and a == pytest.approx(b, abs=1e-5)


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(trained, micro_model, pairs):
    from mathforge.ppm import main

    main(ppm_args(micro_model, pairs, trained, "--dataset_test_split", "test", "--max_steps", str(STEPS + 4),
                  "--save_steps", str(STEPS + 4), "--logging_steps", "2", "--max_eval_samples", "16"))  # fmt: skip
    state = json.loads((trained / f"checkpoint-{STEPS + 4}" / "trainer_state.json").read_text())
    logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert state["global_step"] == STEPS + 4 and STEPS + 2 in logged and STEPS + 4 in logged
    assert json.loads((trained / "ppm_metrics.json").read_text())["eval_pairs"] == 16


@pytest.mark.slow
def test_push_to_hub_publishes_the_ppm_with_its_card(micro_model, pairs, tmp_path, monkeypatch):
    """push_to_hub: the PPM reaches the (faked) Hub through mathforge.push, its held-out accuracy on the card."""
    from huggingface_hub import ModelCard

    from mathforge.ppm import main

    hub = fake_hub(monkeypatch, tmp_path)
    main(ppm_args(micro_model, pairs, tmp_path / "run", "--dataset_test_split", "test", "--max_steps", "2",
                  "--max_eval_samples", "8", "--push_to_hub", "true", "--hub_model_id", "me/micro-ppm",
                  "--hub_token", "hf_fake", "--hub_private_repo", "false"))  # fmt: skip
    assert hub.calls[0] == ("create_repo", "me/micro-ppm", "model", False) and len(hub.calls) == 2
    uploaded = hub.uploaded("me/micro-ppm")
    assert {"model.safetensors", "ppm_metrics.json", "README.md", "recipes/recipe.yaml"} <= files_in(uploaded)
    card = ModelCard.load(uploaded / "README.md")
    assert card.data.pipeline_tag == "text-classification" and "ppm" in card.data.tags
    accuracy = json.loads((uploaded / "ppm_metrics.json").read_text())["eval_pairwise_accuracy"]
    (result,) = card.data.eval_results
    assert result.metric_name == "pairwise accuracy" and result.metric_value == round(100 * accuracy, 2)


@pytest.mark.slow
def test_value_objective_reduces_mse(micro_model, pairs, tmp_path):
    """AlphaMath's value head: tanh(r) regressed on Q with MSE (here Q = 0.8 after a good step, -0.2 after a bad)."""
    from mathforge.ppm import main

    rows = []
    for p in read_pairs(pairs / "train.jsonl", 200):
        rows += [{"id": p["id"], "prompt": p["prompt"] + p["chosen"], "value": 0.8},
                 {"id": p["id"], "prompt": p["prompt"] + p["rejected"], "value": -0.2}]  # fmt: skip
    data = write_jsonl(tmp_path / "values" / "train.jsonl", rows).parent
    out = tmp_path / "value"
    main(ppm_args(micro_model, data, out, "--objective", "value", "--max_steps", "20", "--logging_steps", "2",
                  "--save_steps", "20", "--eval_fraction", "0.2"))  # fmt: skip
    history = json.loads((out / "checkpoint-20" / "trainer_state.json").read_text())["log_history"]
    mse = [h["mse"] for h in history if "mse" in h]
    assert mse[-1] < 0.7 * mse[0], mse
    metrics = json.loads((out / "ppm_metrics.json").read_text())
    assert metrics["eval_mse"] < 0.2  # below the best constant's 0.25: it tells good steps from bad
    assert all(weights_moved(micro_model, out).values())


def test_held_out_split_is_by_problem(tmp_path):
    from mathforge.ppm import PPMScriptArguments, train_eval_sets

    rows = [
        {"id": f"p{i // 4}", "prompt": f"q{i // 4} s{i % 4}", "chosen": "a", "rejected": "b"}
        for i in range(400)
    ]
    data = write_jsonl(tmp_path / "pairs" / "train.jsonl", rows).parent
    train, held = train_eval_sets(PPMScriptArguments(dataset_name=str(data), eval_fraction=0.2))
    assert len(train) + len(held) == 400 and 40 <= len(held) <= 120
    assert not set(train["id"]) & set(held["id"])  # no problem on both sides
    again = train_eval_sets(PPMScriptArguments(dataset_name=str(data), eval_fraction=0.2))[1]
    assert again["prompt"] == held["prompt"]  # deterministic: the same on every rank and every run


def test_too_few_problems_to_hold_out_trains_on_all(tmp_path):
    from mathforge.ppm import PPMScriptArguments, _held_out, train_eval_sets

    ids = [f"p{i}" for i in range(200)]
    held_id = next(i for i in ids if _held_out(i, 0.5))  # one problem that falls in the held-out share
    rows = [{"id": held_id, "prompt": f"s{i}", "chosen": "a", "rejected": "b"} for i in range(6)]
    data = write_jsonl(tmp_path / "pairs" / "train.jsonl", rows).parent
    train, held = train_eval_sets(PPMScriptArguments(dataset_name=str(data), eval_fraction=0.5))
    assert held is None and len(train) == 6  # not an empty training set


def test_bad_inputs_are_one_line_errors(tmp_path, micro_model, capsys):
    from mathforge.cli import main as cli_main
    from mathforge.errors import UserError
    from mathforge.ppm import main

    with pytest.raises(UserError, match="dataset not found"):
        main(ppm_args(micro_model, tmp_path / "none", tmp_path / "o"))
    bad = write_jsonl(tmp_path / "bad" / "train.jsonl", [{"prompt": "p", "preferred": "a", "rejected": "b"}])
    with pytest.raises(UserError, match="column 'chosen' missing"):
        main(ppm_args(micro_model, bad.parent, tmp_path / "o"))
    with pytest.raises(UserError, match="column 'value' missing"):
        main(ppm_args(micro_model, bad.parent, tmp_path / "o", "--objective", "value"))
    chat = write_jsonl(tmp_path / "chat" / "train.jsonl", [{"prompt": [{"role": "user", "content": "p"}],
                                                           "chosen": [], "rejected": []}])  # fmt: skip
    with pytest.raises(UserError, match="must hold strings"):
        main(ppm_args(micro_model, chat.parent, tmp_path / "o"))
    with pytest.raises(UserError, match="objective must be one of"):
        main(ppm_args(micro_model, bad.parent, tmp_path / "o", "--objective", "listwise"))
    with pytest.raises(UserError, match="model folder not found"):
        main(ppm_args(tmp_path / "no-model", bad.parent, tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    # Through the command line: one line on stderr, exit code 2.
    capsys.readouterr()
    assert cli_main(["ppm", *ppm_args(micro_model, tmp_path / "none", tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mathforge ppm: error: dataset not found") and "\n" not in err
