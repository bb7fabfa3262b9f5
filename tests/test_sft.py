"""Real SFT runs of the tiny model with TRL's SFTTrainer, in-process and through `accelerate launch`.

The 300-step run checked here is conftest's `sft_policy`, trained once per session (test_rl and test_cluster
start RL from it)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_hub import fake_hub, files_in
from weights import weights_moved

from mathforge import steps

REPO = Path(__file__).resolve().parents[1]


def sft_args(model, data, out, *extra):
    return [
        "--config", str(REPO / "recipes/tiny/sft/config_toy.yaml"),
        "--model_name_or_path", str(model),
        "--dataset_name", str(data),
        "--output_dir", str(out),
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_sft_loss_falls_weights_move_and_artifacts_are_saved(sft_policy, tiny_model):
    state = json.loads(next(sft_policy.glob("checkpoint-*/trainer_state.json")).read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) >= 10
    assert losses[-1] < 0.5 * losses[0], losses
    for name in ("model.safetensors", "tokenizer.json", "recipe.yaml", "README.md", "generation_config.json"):
        assert (sft_policy / name).exists(), name
    recipe = yaml.safe_load((sft_policy / "recipe.yaml").read_text())
    assert recipe["max_steps"] == 300 and recipe["lr_scheduler_type"] == "cosine"
    assert recipe["weight_decay"] == 0  # so only the gradient moves a weight: a zeroed one leaves them all
    moved = weights_moved(tiny_model, sft_policy)
    assert len(moved) > 10 and all(moved.values()), [name for name, m in moved.items() if not m]


@pytest.mark.slow
def test_trained_model_writes_the_step_format_and_stops(sft_policy, toy_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sft_policy)
    model = AutoModelForCausalLM.from_pretrained(sft_policy)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert eos in (
        [model.generation_config.eos_token_id]
        if isinstance(model.generation_config.eos_token_id, int)
        else model.generation_config.eos_token_id
    )
    problem = json.loads((toy_data / "test.jsonl").read_text().splitlines()[0])["problem"]
    prompt = steps.chat_prompt(tok, problem)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=600, do_sample=False)
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    text = tok.decode(new, skip_special_tokens=False)
    # The model learned the format: steps, then an answer with a box, then the end-of-turn token.
    assert new[-1] == eos, text[-200:]
    parsed = steps.parse_completion(text)
    assert parsed.steps and parsed.finished and "\\boxed{" in parsed.answer


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(sft_policy, tiny_model, toy_data, tmp_path):
    from mathforge.sft import main

    # Same output dir (a copy: the session's policy stays as it is), more steps: training resumes at step
    # 300 instead of starting again.
    trained = shutil.copytree(sft_policy, tmp_path / "run")
    main(sft_args(tiny_model, toy_data, trained, "--max_steps", "310", "--per_device_train_batch_size", "8",
                  "--save_steps", "310"))  # fmt: skip
    report = json.loads((trained / "ranks" / "rank_0.json").read_text())
    assert report["resumed_from"] == "checkpoint-300" and report["global_step"] == 310
    assert (trained / "checkpoint-310" / "checkpoint_complete").is_file()
    state = json.loads((trained / "checkpoint-310" / "trainer_state.json").read_text())
    # The history of the first 300 steps came along with the checkpoint.
    assert [h["step"] for h in state["log_history"] if "loss" in h][:2] == [25, 50]


@pytest.mark.slow
def test_two_process_cpu_launch(tiny_model, toy_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "accelerate_configs/cpu_2proc.yaml"),
        "-m", "mathforge.sft",
        *sft_args(tiny_model, toy_data, out, "--max_steps", "6", "--per_device_train_batch_size", "4",
                  "--save_steps", "6", "--logging_steps", "2"),
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    reports = [json.loads((out / "ranks" / f"rank_{r}.json").read_text()) for r in (0, 1)]
    for rank, report in enumerate(reports):
        assert report["rank"] == rank and report["world_size"] == 2 and report["global_step"] == 6
        assert report["distributed_type"] == "DistributedType.MULTI_CPU"
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-6"]
    # both ranks finished saving it (rank 1's RNG state included) before it was marked resumable
    assert {"rng_state_0.pth", "rng_state_1.pth", "checkpoint_complete"} <= {
        p.name for p in (out / "checkpoint-6").iterdir()
    }


@pytest.mark.slow
def test_push_to_hub_publishes_once_through_mathforge_push(tiny_model, toy_data, tmp_path, monkeypatch):
    """push_to_hub: the trained model reaches the (faked) Hub once, at the end, with mathforge's card."""
    from huggingface_hub import ModelCard

    from mathforge.errors import UserError
    from mathforge.sft import main

    hub = fake_hub(monkeypatch, tmp_path)
    out = tmp_path / "run"
    push = ["--push_to_hub", "true", "--hub_token", "hf_fake"]
    with pytest.raises(UserError, match="hub_model_id .* must be a Hub repo id owner/name"):
        main(sft_args(tiny_model, toy_data, out, *push))  # checked before training: nothing written
    assert not out.exists() and hub.calls == []
    main(sft_args(tiny_model, toy_data, out, *push, "--hub_model_id", "me/tiny-policy", "--max_steps", "2",
                  "--save_steps", "2"))  # fmt: skip
    assert hub.calls[0] == ("create_repo", "me/tiny-policy", "model", True) and len(hub.calls) == 2
    uploaded = hub.uploaded("me/tiny-policy")
    assert {"model.safetensors", "tokenizer.json", "README.md", "recipes/recipe.yaml"} <= files_in(uploaded)
    assert not any(f.startswith(("checkpoint-", "ranks/")) for f in files_in(uploaded))
    card = ModelCard.load(uploaded / "README.md")
    assert card.data.pipeline_tag == "text-generation" and "policy" in card.data.tags
    recipe = yaml.safe_load((uploaded / "recipes/recipe.yaml").read_text())
    assert recipe["push_to_hub"] is True and recipe["hub_token"] == "<HUB_TOKEN>"


def test_sft_bad_inputs_are_one_line_errors(tmp_path, tiny_model):
    from mathforge.errors import UserError
    from mathforge.sft import main

    with pytest.raises(UserError, match="data file not found"):
        main(sft_args(tiny_model, tmp_path / "none.jsonl", tmp_path / "o"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1", "reply": "2"}\n')
    with pytest.raises(UserError, match="no solution column"):
        main(sft_args(tiny_model, bad, tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_last_checkpoint_skips_one_cut_off_mid_save(tmp_path):
    """Only a checkpoint marked complete (every rank finished saving) is resumed from: a newer one holding rank 0's
    trainer_state.json but not the mark was cut off while another rank was still writing."""
    from mathforge.training import COMPLETE, last_checkpoint

    assert last_checkpoint(str(tmp_path / "missing")) is None
    for step in (100, 200, 300, 400):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (100, 200):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        (tmp_path / f"checkpoint-{step}" / COMPLETE).touch()
    (tmp_path / "checkpoint-300" / "trainer_state.json").write_text("{}")  # rank 1 still saving when killed
    (tmp_path / "checkpoint-400" / "model.safetensors").write_text("half")  # killed before its state
    said = []
    assert last_checkpoint(str(tmp_path), said.append) == str(tmp_path / "checkpoint-200")
    assert [line.split(":")[0] for line in said] == [
        f"passing over {tmp_path}/checkpoint-{n}" for n in (400, 300)
    ]


def test_masking_executor_output_leaves_only_what_the_model_writes_in_the_loss(
    tiny_model, toy_data, tmp_path
):
    import datasets
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from mathforge.sft import SFTScriptArguments, main, to_prompt_completion, tokenize_masking_outputs

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = datasets.Dataset.from_list(
        [json.loads(line) for line in (toy_data / "train.jsonl").read_text().splitlines()[:4]]
    )
    pairs = to_prompt_completion(rows, SFTScriptArguments(system_prompt=steps.SYSTEM_PROMPT))
    for row, pair in zip(tokenize_masking_outputs(pairs, tok), pairs):
        trained = tok.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
        solution = pair["completion"][0]["content"]
        assert (
            steps.OUTPUT_OPEN in solution and steps.OUTPUT_OPEN not in trained
        )  # no executor text in the loss
        # what is left is exactly what the model writes: its steps, its answer, the end of its turn
        written = "".join(steps.render_step(s.code) for s in steps.parse_completion(solution).steps)
        assert (
            trained == written + steps.render_answer(steps.parse_completion(solution).answer) + "<|im_end|>\n"
        )
        assert tok.decode(row["input_ids"]).endswith(solution + "<|im_end|>\n")  # ... and it still reads them

    out = tmp_path / "masked"
    main(sft_args(tiny_model, toy_data, out, "--mask_executor_output", "true", "--max_steps", "3",
                  "--per_device_train_batch_size", "4", "--save_strategy", "no", "--logging_steps", "1"))  # fmt: skip
    before, after = load_file(tiny_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
