"""The pipeline on the tokenizer of the models users train: Qwen2.5's byte-level BPE, built offline.

In that vocabulary a step tag is several tokens and ``>`` merges with a following newline (``</step>\\n`` is
``</``, ``step``, ``>\\n``), so any code that re-tokenizes generated text changes what was sampled. The
model is the ``mini`` Qwen2 (head size 32: vLLM on CPU has no attention kernel for the micro size's 16) with
the real tokenizer (151,936 embedding rows), pretrained on toy solutions for 150 steps: it writes the step
format, which is all these tests need of it.
"""

import json
import os
from pathlib import Path

import pytest

from mathforge import steps

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory):
    """Built here (~3-6 min on 2 cores; then kept in mathforge's cache), or the folder MATHFORGE_QWEN_MODEL names (`mathforge tiny-model
    --tokenizer qwen2.5 --size mini --pretrain_steps 150 --output DIR`)."""
    from mathforge.tiny_model import DEFAULT_CACHE, build

    if os.environ.get("MATHFORGE_QWEN_MODEL"):
        return Path(os.environ["MATHFORGE_QWEN_MODEL"])
    out = tmp_path_factory.mktemp("qwen") / "mini"
    return build(out, size="mini", tokenizer="qwen2.5", pretrain_steps=150, seed=0, cache_dir=DEFAULT_CACHE)


@pytest.fixture(scope="module")
def problems(toy_data) -> list[dict]:
    return [json.loads(line) for line in (toy_data / "test.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer(qwen_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_model)


@pytest.fixture(scope="module")
def executor():
    from mathforge.executor import Executor

    with Executor() as ex:
        yield ex


@pytest.fixture(scope="module")
def generators(qwen_model):
    from mathforge.generation import HFGenerator, VLLMGenerator

    both = {"transformers": HFGenerator(str(qwen_model)), "vllm": VLLMGenerator(str(qwen_model), seed=0)}
    yield both
    both["vllm"].close()


def test_the_tokenizer_is_qwens(tokenizer):
    assert type(tokenizer).__name__ == "Qwen2Tokenizer" and len(tokenizer) == 151665
    assert tokenizer("Hello, world!", add_special_tokens=False)["input_ids"] == [9707, 11, 1879, 0]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tokenizer.convert_tokens_to_ids(specials) == [151643, 151644, 151645]
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"  # as Qwen2.5-Math's base models
    pieces = tokenizer.convert_ids_to_tokens(
        tokenizer("</step>\n<output>", add_special_tokens=False)["input_ids"]
    )
    assert pieces == ["</", "step", ">Ċ", "<", "output", ">"]  # the tags are several tokens; ">\n" is one


def test_the_chat_template_renders_the_recipes_system_prompt(tokenizer):
    rendered = steps.chat_prompt(tokenizer, "What is 2 + 3?", steps.SYSTEM_PROMPT)
    assert rendered == (
        f"<|im_start|>system\n{steps.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # without one, Qwen2.5-Math's own default system prompt: why every recipe must set ours
    assert "Please reason step by step" in steps.chat_prompt(tokenizer, "What is 2 + 3?")


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_rollouts_are_token_exact(backend, generators, tokenizer, executor, problems, capsys):
    """Stop strings that span tokens stop on the token that completes them, the model continues exactly the
    ids it sampled, and the RL completion's mask-1 tokens are exactly the sampled ones, none missing.
    Re-tokenizing the text pieces (what RL did before) changes tokens on this tokenizer."""
    from mathforge.generation import RecordingGenerator, SamplingConfig
    from mathforge.rl import RLScriptArguments, StepRollout, never_sampled
    from mathforge.rollout import rollout

    recorder = RecordingGenerator(generators[backend])
    prompts = [steps.chat_prompt(tokenizer, p["problem"], steps.SYSTEM_PROMPT) for p in problems[:10]]
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=96, seed=0)
    groups = rollout(prompts, recorder, executor, sampling, max_steps=4)

    spanning = 0
    for c in recorder.completions:
        assert c.text == tokenizer.decode([i for i in c.token_ids if i != tokenizer.eos_token_id])
        if c.finish_reason == "stop" and c.token_ids[-1] != tokenizer.eos_token_id:
            before = tokenizer.decode(c.token_ids[:-1])
            assert any(s in c.text for s in steps.STOP_STRINGS)  # stopped at a stop string ...
            assert not any(s in before for s in steps.STOP_STRINGS)  # ... on the token that completed it
            spanning += not any(s in tokenizer.decode(c.token_ids[-1:]) for s in steps.STOP_STRINGS)
    assert spanning > 0  # stop strings that began in earlier tokens stopped where they should

    encoder = StepRollout(RLScriptArguments(), tokenizer, max_completion_length=4096)
    trajectories = [t for group in groups for t in group]
    wrong = sum(never_sampled(t, encoder.encode(t), recorder.sampled) for t in trajectories)
    # what RL did before: each written chunk re-tokenized from its text
    before = 0
    for t in trajectories:
        written = [i for s in t.segments if s.by_model for i in s.ids]
        old = [
            i
            for s in t.segments
            if s.by_model
            for i in tokenizer(s.text, add_special_tokens=False)["input_ids"]
        ]
        before += sum(a != b for a, b in zip(old, written)) + abs(len(old) - len(written))
    checked = len(trajectories)
    with capsys.disabled():
        print(
            f"\n{backend}: {checked} rollouts, {wrong} never-sampled tokens in the RL loss "
            f"(re-tokenizing the chunks would change {before})"
        )
    assert checked == 20 and wrong == 0


class Replay:
    """Answers each context with the ids the real model sampled there when recorded (the premise: identical
    sampled tokens), so that every caller of the step loop can be given the same samples."""

    def __init__(self, recorder):
        self.sampled, self.tokenizer = recorder.sampled, recorder.tokenizer

    def generate(self, prompts, sampling):
        from mathforge.generation import completion_from_ids

        eos = {self.tokenizer.eos_token_id}
        return [
            [completion_from_ids(self.tokenizer, list(self.sampled[tuple(ids)][0]), eos, sampling.stop)]
            * sampling.n
            for ids in prompts
        ]


def test_every_caller_writes_the_same_text(generators, tokenizer, executor, problems):
    """The same sampled tokens give byte-identical solutions whichever caller runs the one step loop: plain
    rollouts (evaluation), best-of-N, step beam search, MCTS, RL's encoding, and majority vote."""
    from mathforge.generation import RecordingGenerator, SamplingConfig
    from mathforge.grader import extract_answer
    from mathforge.rl import RLScriptArguments, StepRollout
    from mathforge.rollout import rollout
    from mathforge.search import inference
    from mathforge.search.mcts import SearchConfig

    recorder = RecordingGenerator(generators["vllm"])
    prompts = [steps.chat_prompt(tokenizer, p["problem"], steps.SYSTEM_PROMPT) for p in problems]
    sampling = SamplingConfig(n=1, temperature=1.0, max_new_tokens=96, seed=1)
    trajectories = [t for (t,) in rollout(prompts, recorder, executor, sampling, max_steps=8)]
    finished = [t for t in trajectories if t.end == "answer"]
    assert finished, "no sampled solution reached an answer"
    replay, zero = Replay(recorder), (lambda texts: [0.0] * len(texts))
    encoder = StepRollout(RLScriptArguments(), tokenizer, max_completion_length=4096)
    checked = 0
    for traj in finished[:4]:
        prompt = [traj.prompt]
        ids, _ = encoder.encode(traj)
        groups = rollout(prompt, replay, executor, sampling, max_steps=8)
        texts = {
            "rollout": groups[0][0].completion,
            "best_of_n": inference.best_of_n(prompt, groups, zero)[0].completion,
            "beam": inference.step_beam_search(prompt, replay, executor, zero, sampling, 1, 8)[0].completion,
            "mcts": inference.mcts(
                prompt, replay, executor, zero, SearchConfig(num_rollouts=1, num_candidates=1, max_depth=8)
            )[0].completion,
            "rl": tokenizer.decode(ids[:-1]),  # the RL completion without the end-of-turn token it appends
        }
        assert set(texts.values()) == {traj.completion}, texts
        # majority vote picks among readable final answers only (none: no answer, by its rule)
        voted = inference.majority_vote(groups)[0].completion
        assert voted == (traj.completion if extract_answer(traj.answer) is not None else None)
        checked += 1
    assert checked > 0
