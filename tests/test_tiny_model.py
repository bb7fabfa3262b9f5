"""The tiny random Qwen2 model + toy-trained tokenizer: loads like a Hub model, tokenizes the step
format exactly, stops at <|im_end|>, is byte-for-byte reproducible for a seed, and its synthetic copy
pretraining teaches it to copy. (The CLI pretrains by default, ~1000 steps: the builds here pass
`--pretrain_steps 0` or a few steps to stay fast.)"""

from __future__ import annotations

import hashlib
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mathforge import tiny_model
from mathforge.cli import main as cli_main
from mathforge.data.toy import corpus
from mathforge.steps import SPECIAL_TOKENS, SYSTEM_PROMPT, Step, boxed_answer, render_solution


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "model"
    assert cli_main(["tiny-model", "--output", str(out), "--seed", "0", "--pretrain_steps", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


def _hashes(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


SOLUTION = render_solution(
    [
        Step("# 347 boxes of 28\nboxes = 347 * 28\nprint(boxes)", output="9716"),
        Step("print(boxes - 5)", output="9711"),
    ],
    boxed_answer("9711"),
)


def test_loads_and_generates(model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    assert model.config.model_type == "qwen2" and 500_000 < n_params < 3_000_000
    assert model.config.vocab_size == len(tokenizer)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 347 * 28?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(out[0]), str)


def test_size_on_disk_is_a_few_mb(model_dir):
    total = sum(f.stat().st_size for f in model_dir.iterdir())
    assert 1e6 < total < 10e6


def test_generation_config_stops_at_im_end(model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == im_end
    assert model.generation_config.pad_token_id == pad
    assert model.generation_config.bos_token_id is None and tokenizer.bos_token is None


def test_round_trip_is_exact(tokenizer):
    texts = [SOLUTION, SYSTEM_PROMPT, "x = Fraction(-585, 8)\nprint(f'{x}')  # ünïcode ÷ 3/4\n\n\tdone"]
    texts += list(corpus(60, seed=11))
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode(ids, skip_special_tokens=True) == text  # the tags are not "special"


def test_tags_are_single_tokens(tokenizer):
    for tag in [*SPECIAL_TOKENS, "<|im_start|>", "<|im_end|>", "<|endoftext|>"]:
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1, tag
        assert len(tokenizer(f"\n{tag}\nx", add_special_tokens=False)["input_ids"]) == 4, tag
    ids = tokenizer(SOLUTION, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<step>")) == 2


def test_digits_are_single_tokens(tokenizer):
    for d in "0123456789":
        assert len(tokenizer(d, add_special_tokens=False)["input_ids"]) == 1
    tokens = tokenizer.convert_ids_to_tokens(
        tokenizer("print(347 * 28)", add_special_tokens=False)["input_ids"]
    )
    assert [t for t in tokens if t.isdigit()] == ["3", "4", "7", "2", "8"]
    assert tokenizer.convert_ids_to_tokens(
        tokenizer("123456789", add_special_tokens=False)["input_ids"]
    ) == list("123456789")


def test_chat_template(tokenizer):
    user = [{"role": "user", "content": "Q?"}]
    assert (
        tokenizer.apply_chat_template(user, tokenize=False) == "<|im_start|>user\nQ?<|im_end|>\n"
    )  # no default system
    assert (
        tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    )
    full = [{"role": "system", "content": "S"}, *user, {"role": "assistant", "content": "A"}]
    assert (
        tokenizer.apply_chat_template(full, tokenize=False)
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    )


def test_prompt_completion_format_for_trl(tokenizer):
    """TRL's SFTTrainer takes the completion to start where the tokenized prompt (with generation prompt)
    stops being a prefix of the tokenized prompt+completion: it must be an exact prefix."""
    prompt = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "What is 347 * 28 - 5?"},
    ]
    completion = [{"role": "assistant", "content": SOLUTION}]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]
    full_ids = tokenizer.apply_chat_template(prompt + completion, return_dict=True)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    completion_text = tokenizer.decode(full_ids[len(prompt_ids) :])
    assert completion_text == SOLUTION + "<|im_end|>\n"
    assert tokenizer.eos_token_id in full_ids[len(prompt_ids) :]


def test_deterministic_for_a_seed(tmp_path, model_dir):
    no_pretrain = ["--pretrain_steps", "0"]
    assert cli_main(["tiny-model", "--output", str(tmp_path / "same"), "--seed", "0", *no_pretrain]) == 0
    assert _hashes(tmp_path / "same") == _hashes(model_dir)
    assert cli_main(["tiny-model", "--output", str(tmp_path / "other"), "--seed", "1", *no_pretrain]) == 0
    other = _hashes(tmp_path / "other")
    assert other["model.safetensors"] != _hashes(model_dir)["model.safetensors"]


def test_pretraining_changes_weights_deterministically(tmp_path, model_dir):
    """A few pretraining steps (both phases: random repeats, then toy lookups) change the weights, the
    same way for the same seed; the tokenizer is untouched."""
    args = ["--seed", "0", "--pretrain_steps", "4", "--pretrain_batch_size", "4", "--cache_dir", ""]
    for name in ("a", "b"):
        assert cli_main(["tiny-model", "--output", str(tmp_path / name), *args]) == 0
    a, b, untrained = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(model_dir)
    assert a == b
    assert a["model.safetensors"] != untrained["model.safetensors"]
    assert a["tokenizer.json"] == untrained["tokenizer.json"]


def test_a_pretrained_model_is_cached_by_its_options(tmp_path, capsys):
    """The second build with the same options is copied from the cache, file for file what a build without the
    cache writes; other options miss the cache."""
    cache = tmp_path / "cache"
    args = ["--pretrain_steps", "3", "--pretrain_batch_size", "4", "--cache_dir", str(cache)]
    assert cli_main(["tiny-model", "--output", str(tmp_path / "first"), "--seed", "0", *args]) == 0
    assert "copy-pretrained 3 steps" in capsys.readouterr().out
    assert cli_main(["tiny-model", "--output", str(tmp_path / "again"), "--seed", "0", *args]) == 0
    assert "copied the tiny model built with these options from" in capsys.readouterr().out
    fresh = ["--pretrain_steps", "3", "--pretrain_batch_size", "4", "--cache_dir", ""]
    assert cli_main(["tiny-model", "--output", str(tmp_path / "fresh"), "--seed", "0", *fresh]) == 0
    assert _hashes(tmp_path / "again") == _hashes(tmp_path / "first") == _hashes(tmp_path / "fresh")
    assert cli_main(["tiny-model", "--output", str(tmp_path / "other"), "--seed", "1", *args]) == 0
    assert "copy-pretrained 3 steps" in capsys.readouterr().out
    assert len(list(cache.iterdir())) == 2


def test_copy_tasks_are_well_formed(tokenizer):
    rng = random.Random(0)
    texts = tiny_model._toy_texts(20, seed=0)
    assert all(problem and code for problem, code in texts)
    seqs = [tiny_model._random_repeat(tokenizer, rng) for _ in range(50)]
    seqs += [tiny_model._toy_task(tokenizer, rng, texts) for _ in range(200)]
    tags = set(tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)) | {0, 1, 2}
    for ids, start in seqs:
        assert 0 < start < len(ids) and not tags & set(ids)
    for ids, start in seqs[:50]:  # random repeats: x, newline, x
        k = (len(ids) - 1) // 2
        assert ids[:k] == ids[k + 1 :] and start == k + 1
    answers = [tokenizer.decode(ids[start:]) for ids, start in seqs[50:]]
    assert any(a.startswith(" ") and a.strip().isdigit() for a in answers)  # Name -> value
    assert any(" -> " in a for a in answers)  # word -> number


def test_pretraining_teaches_copying(tokenizer):
    """Held-out random-token repeats (chance ~1/1000): 150 steps, well before the induction circuit
    fully forms (~500 steps; the default 1200 reach ~0.99), already copy several times more than the
    untrained model and over 10x chance."""
    torch.set_num_threads(1)
    model = tiny_model.build_model(tokenizer, size="tiny", seed=0)
    before = tiny_model.copy_accuracy(model, tokenizer, random.Random(1))
    stats = tiny_model.pretrain(model, tokenizer, steps=150, batch_size=16, seed=0, log=None)
    after = tiny_model.copy_accuracy(model, tokenizer, random.Random(1))
    assert before < 0.01
    assert after > 0.01 and after > 3 * before, (before, after, stats)


def test_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli_main(["tiny-model", "--output", str(out), "--pretrain_steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"
    assert cli_main(["tiny-model", "--output", str(out), "--overwrite", "true", "--pretrain_steps", "0"]) == 0
    assert (out / "config.json").exists() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temp folders left behind


def test_bad_size_is_one_line_error(tmp_path, capsys):
    assert cli_main(["tiny-model", "--output", str(tmp_path / "m"), "--size", "huge"]) == 2
    err = capsys.readouterr().err
    assert "unknown size 'huge'" in err and len(err.strip().splitlines()) == 1


def test_small_size_has_about_25m_params(tokenizer):
    model = tiny_model.build_model(tokenizer, size="small", seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    assert 20e6 < n_params < 30e6
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, len(tokenizer))


def test_pretrain_default_depends_on_size():
    assert tiny_model.TinyModelConfig(size="tiny").pretrain_steps == 1200
    assert tiny_model.TinyModelConfig(size="micro").pretrain_steps == 0  # unit tests stay fast
    assert tiny_model.TinyModelConfig(size="tiny", pretrain_steps=7).pretrain_steps == 7
    with pytest.raises(ValueError, match="pretrain_steps"):
        tiny_model.TinyModelConfig(pretrain_steps=-1)
