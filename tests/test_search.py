"""MCTS search, tree extraction and inference-time search, on a real tiny model, executor and grader.

A random-weight tiny model writes almost only invalid chunks, so the module first fine-tunes it (real
`mathforge sft`, about a minute on CPU) on the teacher solutions of 6 short level-1 toy problems
until it nearly memorizes them, and searches those same problems: sampling at temperature 1 then
gives a real mix of correct answers, wrong answers, failing code and invalid chunks in every tree.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hub import fake_hub

from mathforge import steps
from mathforge.data.loading import DataArguments
from mathforge.generation import SamplingConfig
from mathforge.rollout import rollout
from mathforge.search import extract as ex
from mathforge.search import inference, mcts
from mathforge.search.mcts import SearchConfig, Tree, grade_answers, read_trees, run_search, search

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


class CountingGenerator:
    """The real generator, with every call and its batch size recorded."""

    def __init__(self, inner):
        self.inner, self.tokenizer, self.calls = inner, inner.tokenizer, []

    def generate(self, prompts, sampling):
        self.calls.append(len(prompts))
        return self.inner.generate(prompts, sampling)


@pytest.fixture(scope="module")
def problems(toy_data, tmp_path_factory):
    """6 short level-1 toy problems (id, problem, answer, solution)."""
    rows = [json.loads(line) for line in (toy_data / "train.jsonl").read_text().splitlines()]
    rows = sorted((r for r in rows if r["level"] == 1), key=lambda r: (len(r["solution"]), r["id"]))[:6]
    path = tmp_path_factory.mktemp("search-data") / "few.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def policy(tiny_model, problems, tmp_path_factory):
    from mathforge.sft import main

    out = tmp_path_factory.mktemp("search-sft") / "policy"
    main(
        [
            "--config", str(REPO / "recipes/tiny/sft/config_toy.yaml"),
            "--model_name_or_path", str(tiny_model), "--dataset_name", str(problems), "--output_dir", str(out),
            "--max_steps", "80", "--per_device_train_batch_size", "6", "--warmup_steps", "10",
            "--save_strategy", "no", "--logging_steps", "40",
        ]
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def generator(policy):
    import torch

    from mathforge.generation import load_generator

    torch.manual_seed(0)
    return load_generator("transformers", str(policy))


@pytest.fixture(scope="module")
def executor():
    from mathforge.executor import Executor

    with Executor() as executor:
        yield executor


@pytest.fixture(scope="module")
def grader():
    from mathforge.grader import Grader

    with Grader() as grader:
        yield grader


@pytest.fixture(scope="module")
def searched(policy, problems, generator, executor, grader, tmp_path_factory):
    """A real round-1 search of the 6 problems, 4 at a time (pipelined: two halves of 2 taking turns),
    through a call-counting generator."""
    out = tmp_path_factory.mktemp("search-out") / "trees.jsonl"
    counting = CountingGenerator(generator)
    config = SearchConfig(
        model_name_or_path=str(policy), num_rollouts=6, num_candidates=4, max_depth=6, batch_problems=4,
        output_file=str(out),
    )  # fmt: skip
    data = DataArguments(dataset_name=str(problems))
    summary = search(config, data, counting, executor, grader=grader, progress=False)
    return summary, counting, read_trees(out)


def check_tree(tree: dict, grader, num_rollouts: int) -> None:
    nodes = tree["nodes"]
    kids = {n["id"]: [] for n in nodes}
    for n in nodes[1:]:
        assert n["parent"] < n["id"]
        kids[n["parent"]].append(n)
    for n in nodes:
        terminal_visits = n["N"] if n["terminal"] else 0
        assert n["N"] == sum(k["N"] for k in kids[n["id"]]) + terminal_visits, n
        assert -1.0 <= n["Q"] <= 1.0
        assert (n["terminal"] is None) == (n["reward"] is None)
        if n["terminal"]:
            assert not kids[n["id"]]
        if n["reward"] == 1.0:  # every +1 is an answer the grader accepts
            assert n["kind"] == "answer" and n["terminal"] == "correct"
            assert grader.grade(n["text"], tree["answer"]) is True
        if n["kind"] == "invalid":
            assert n["terminal"] == "invalid"
        texts = [steps.normalize_chunk(k["kind"], k["text"]) for k in kids[n["id"]] if k["kind"] != "invalid"]
        assert len(texts) == len(set(texts)), "identical siblings must be merged"
        if kids[n["id"]]:
            assert math.isclose(sum(k["prior"] for k in kids[n["id"]]), 1.0, abs_tol=1e-4)
    assert nodes[0]["N"] == num_rollouts == tree["num_rollouts"]
    assert tree["solved"] == any(n["terminal"] == "correct" for n in nodes)


def test_search_trees_are_consistent_and_batched(searched, problems, grader):
    summary, counting, trees = searched
    ids = [json.loads(line)["id"] for line in problems.read_text().splitlines()]
    assert sorted(t["id"] for t in trees) == sorted(ids)
    for tree in trees:
        check_tree(tree, grader, 6)
    # one generator call per search step, every pending expansion of every tree in it
    assert summary["calls_per_search_step"] == 1.0
    assert len(counting.calls) == summary["generator_calls"]
    # pipelined (the default): two halves of 2 trees take turns, each half one call per search step
    assert counting.calls[0] == counting.calls[1] == 2 and max(counting.calls) <= 2
    assert summary["nodes"] == sum(len(t["nodes"]) for t in trees) > 2 * len(counting.calls)
    # the memorized policy finds answers, and also fails in every way the format allows
    reasons = {n["terminal"] for t in trees for n in t["nodes"]}
    assert summary["coverage"] > 0 and {"correct", "invalid"} <= reasons
    assert any(n["output"] for t in trees for n in t["nodes"] if n["kind"] == "step")


def test_puct_with_a_scorer_sets_initial_values(problems, generator, executor, grader):
    """PUCT with a PPM-like scorer (a fixed function of the text), not pipelined: every new non-terminal
    node gets its score as v0, Q stays in [-1, 1], priors come from log-probs; generator calls = search
    steps."""
    rows = [json.loads(line) for line in problems.read_text().splitlines()][:4]
    config = SearchConfig(num_rollouts=4, num_candidates=3, selection="puct", max_depth=5, batch_problems=4)
    trees = [
        Tree(r["id"], steps.chat_prompt(generator.tokenizer, r["problem"]), config, r["problem"], r["answer"])
        for r in rows
    ]
    scored = []

    def scorer(texts):
        scored.append(len(texts))
        return [math.sin(len(t)) * 3 for t in texts]  # out of range on purpose: must be clipped

    counting = CountingGenerator(generator)
    stats = run_search(trees, counting, executor, grade_answers(grader), scorer, config.batch_problems)
    for tree in trees:
        check_tree(tree.to_json(), grader, 4)
    assert len(counting.calls) == stats.search_steps == stats.generator_calls
    assert len(scored) <= stats.search_steps  # one scorer call per search step at most
    for tree in trees:
        for node in tree.nodes[1:]:
            if node.terminal is None:
                assert node.value0 is not None and -1 <= node.value0 <= 1
                assert math.isclose(node.Q, (node.value0 + node.W) / (1 + node.N))


def test_search_resumes_after_a_kill(policy, problems, tmp_path, capsys):
    """`mathforge search` killed (SIGKILL) after its first tree, then run again with the same arguments
    (in this process, to save a second start-up): every problem once, none twice, none lost."""
    from mathforge.search.mcts import main

    out = tmp_path / "trees.jsonl"
    args = [
        "--model_name_or_path", str(policy), "--dataset_name", str(problems), "--max_problems", "3",
        "--output_file", str(out), "--batch_problems", "1", "--num_rollouts", "3", "--num_candidates", "3",
        "--max_depth", "5", "--dtype", "bfloat16",  # and the policy loaded in bf16 through `dtype`
    ]  # fmt: skip
    log = open(tmp_path / "stderr.txt", "w+")
    cmd = [sys.executable, "-m", "mathforge.cli", "search", *args]
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.seek(0)
    assert alive, log.read()[-2000:]
    first = read_trees(out)
    assert 1 <= len(first) < 3
    with open(out, "a") as f:  # as if the kill had come in the middle of a write
        f.write('{"id": "torn", "nodes": [')
    main(args)
    assert f"({len(first)} already in the file)" in capsys.readouterr().out
    ids = [t["id"] for t in read_trees(out)]
    expected = [json.loads(line)["id"] for line in problems.read_text().splitlines()][:3]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(expected)
    assert all(line.startswith("{") for line in out.read_text().splitlines())


# --- extraction --------------------------------------------------------------------------------------------


def hand_tree() -> dict:
    """root -> A(.25) -> {3: correct, 4: wrong, C(-.6, failing code) -> 8: correct}
    -> B(.5)  -> {6: correct, 7: wrong}
    -> D(-1)  -> 10: too_deep
    -> 11: invalid
    -> E(1)   -> G(.25) -> 14: correct;  E -> 15: unvisited step"""

    def node(i, parent, kind, text, q, n=1, terminal=None, error=None, output="", depth=None):
        reward = None if terminal is None else (1.0 if terminal == "correct" else -1.0)
        return {
            "id": i, "parent": parent, "kind": kind, "text": text, "depth": depth, "N": n, "Q": q,
            "output": output if kind == "step" else None, "error": error, "prior": 0.25, "count": 1,
            "value0": None, "terminal": terminal, "reward": reward,
        }  # fmt: skip

    nodes = [
        node(0, None, "root", "", 0.0, 9, depth=0),
        node(1, 0, "step", "a = 2\nprint(a)", 0.25, 3, output="2\n", depth=1),
        node(2, 0, "step", "b = 5\nprint(b)", 0.5, 2, output="5\n", depth=1),
        node(3, 1, "answer", "The answer is \\boxed{5}", 1.0, terminal="correct", depth=2),
        node(4, 1, "answer", "The answer is \\boxed{6}", -1.0, terminal="wrong", depth=2),
        node(5, 1, "step", "print(1/0)", -0.6, error="ZeroDivisionError: division by zero", depth=2),
        node(6, 2, "answer", "The answer is \\boxed{5}", 1.0, terminal="correct", depth=2),
        node(7, 2, "answer", "The answer is \\boxed{7}", -1.0, terminal="wrong", depth=2),
        node(8, 5, "answer", "The answer is \\boxed{5}", 1.0, terminal="correct", depth=3),
        node(9, 0, "step", "d = 1", -1.0, depth=1),
        node(10, 9, "step", "d += 1", -1.0, terminal="too_deep", depth=2),
        node(11, 0, "invalid", "<step>\nx = (", -1.0, terminal="invalid", depth=1),
        node(12, 0, "step", "e = 5", 1.0, depth=1),
        node(13, 12, "step", "print(e)", 0.25, output="5\n", depth=2),
        node(14, 13, "answer", "The answer is \\boxed{5}", 1.0, terminal="correct", depth=3),
        node(15, 12, "step", "f = 0", 0.0, n=0, depth=2),
    ]
    return {"id": "hand", "problem": "What is 2 + 3?", "answer": "5", "solved": True, "nodes": nodes,
            "config": {"model_name_or_path": None, "system_prompt": None}}  # fmt: skip


def test_extraction_rules_on_a_hand_built_tree(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tree = hand_tree()
    view = ex.TreeView(tree)
    n = view.nodes

    def r(*ids):
        return "".join(mcts.node_text(n[i]) for i in ids)

    # SFT: B->6 (mean .75, min .5) beats E->G->14 (mean .75, min .25) on the tie; A->3 (.625) is third;
    # A->C->8 has a failing step and is never a candidate.
    sft = ex.sft_rows(view, top_k=2, system_prompt="Be brief.")
    assert [row["completion"][0]["content"] for row in sft] == [r(2, 6), r(12, 13, 14)]
    assert [(row["mean_q"], row["min_q"]) for row in sft] == [(0.75, 0.5), (0.75, 0.25)]
    assert sft[0]["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
    ]
    assert "<output>\n5\n</output>" in sft[0]["completion"][0]["content"]

    base = steps.chat_prompt(tok, tree["problem"])
    pairs = ex.pair_rows(view, base)
    got = [
        (p["prompt"], p["chosen"], p["rejected"], p["q_chosen"], p["q_rejected"], p["rule"], p["depth"])
        for p in pairs
    ]
    expected = [
        # at the root: positives E (1.0), B (.5); negative D (-1); the invalid chunk is never a side
        (base, r(12), r(9), 1.0, -1.0, "step", 1),
        (base, r(2), r(9), 0.5, -1.0, "step", 1),
        # under A: 3 vs 4; C (-.6) vs 4 is under the 0.5 margin
        (base + r(1), r(3), r(4), 1.0, -1.0, "step", 2),
        (base + r(2), r(6), r(7), 1.0, -1.0, "step", 2),
        # final step: best correct B->6, E->G->14 against lowest wrong D->10 (-1), A->4 (-.375);
        # B->6 vs A->4 etc. share no prefix, so the whole trajectories are compared
        (base, r(2, 6), r(9, 10), 0.75, -1.0, "final", 1),
        (base, r(2, 6), r(1, 4), 0.75, -0.375, "final", 1),
        (base, r(12, 13, 14), r(9, 10), 0.75, -1.0, "final", 1),
        (base, r(12, 13, 14), r(1, 4), 0.75, -0.375, "final", 1),
    ]
    assert got == expected
    assert all(p["prompt"] + p["chosen"] != p["prompt"] + p["rejected"] for p in pairs)

    values = ex.value_rows(view, base)
    assert [v["value"] for v in values] == [n[i]["Q"] for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14)]
    assert values[2]["prompt"] == base + r(1, 3)


def test_final_step_pairs_split_at_the_shared_prefix():
    tree = hand_tree()
    # only A's subtree left: the final-step rule compares A->3 with A->4, which share A
    keep = {0, 1, 3, 4}
    tree["nodes"] = [nd for nd in tree["nodes"] if nd["id"] in keep]
    view = ex.TreeView(tree)
    pairs = ex.pair_rows(view, "P")
    assert len(pairs) == 1 and pairs[0]["rule"] == "step"  # the final-step pair is the same pair: kept once
    assert pairs[0]["prompt"] == "P" + mcts.render_chunk("step", "a = 2\nprint(a)", "2\n")


def test_extract_command_and_trl_trainers(tiny_model, tmp_path):
    """The written sets load with `datasets` and go into TRL's SFTTrainer and RewardTrainer unchanged."""
    import datasets
    from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    trees = tmp_path / "trees.jsonl"
    trees.write_text(json.dumps(hand_tree()) + "\n")
    out = tmp_path / "data"
    stats = ex.main(
        ["--trees", str(trees), "--output_dir", str(out), "--model_name_or_path", str(tiny_model)]
    )
    assert stats["pairs"] == 8 and stats["sft_rows"] == 2 and stats["coverage"] == 100.0
    assert json.loads((out / "stats.json").read_text()) == stats
    sets = {
        k: datasets.load_dataset("json", data_files=str(out / k / "train.jsonl"), split="train")
        for k in ex.KINDS
    }
    common = dict(
        max_steps=2, per_device_train_batch_size=2, use_cpu=True, report_to="none", save_strategy="no"
    )
    sft = SFTTrainer(
        model=str(tiny_model),
        train_dataset=sets["sft"],
        args=SFTConfig(output_dir=str(tmp_path / "s"), **common),
    )
    assert sft.train().global_step == 2
    rm = RewardTrainer(
        model=str(tiny_model),
        train_dataset=sets["pairs"],
        args=RewardConfig(output_dir=str(tmp_path / "r"), **common),
    )
    assert rm.train().global_step == 2
    assert len(sets["values"]) == 13 and set(sets["values"].column_names) >= {"prompt", "value"}


def test_extract_push_to_hub_goes_through_mathforge_push(tiny_model, tmp_path, monkeypatch):
    """--push_to_hub publishes the output folder as `mathforge push --dataset_dir` does: one configuration per
    set, with its card; a bad repo id stops before anything is written."""
    from huggingface_hub import DatasetCard

    from mathforge.errors import UserError

    hub = fake_hub(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_fake")  # extract takes the token from the environment or the login
    trees = tmp_path / "trees.jsonl"
    trees.write_text(json.dumps(hand_tree()) + "\n")
    argv = ["--trees", str(trees), "--model_name_or_path", str(tiny_model), "--private", "false"]
    with pytest.raises(UserError, match="push_to_hub must be a Hub repo id owner/name"):
        ex.main([*argv, "--output_dir", str(tmp_path / "bad"), "--push_to_hub", "data"])
    assert not (tmp_path / "bad").exists() and hub.calls == []
    ex.main([*argv, "--output_dir", str(tmp_path / "data"), "--push_to_hub", "me/tiny-data"])
    assert hub.calls[0] == ("create_repo", "me/tiny-data", "dataset", False)
    uploaded = hub.uploaded("me/tiny-data")
    assert {f"{k}/train.jsonl" for k in ex.KINDS} | {"stats.json", "README.md"} == hub.calls[1][3]
    for kind in ex.KINDS:
        assert (uploaded / kind / "train.jsonl").read_text() == (
            tmp_path / "data" / kind / "train.jsonl"
        ).read_text()
    card = DatasetCard.load(uploaded / "README.md")
    assert [c["config_name"] for c in card.data.configs] == list(ex.KINDS)


def test_extract_on_real_search_output(searched, policy, tmp_path):
    _, _, trees = searched
    sets, stats = ex.extract(
        trees, __import__("transformers").AutoTokenizer.from_pretrained(policy), ex.ExtractConfig()
    )
    solved = sum(t["solved"] for t in trees)
    assert stats["problems"] == len(trees) and stats["solved"] == solved
    assert len({row["id"] for row in sets["sft"]}) <= solved and len(sets["sft"]) >= 1
    counts = {}
    for row in sets["sft"]:
        counts[row["id"]] = counts.get(row["id"], 0) + 1
        parsed = steps.parse_completion(row["completion"][0]["content"])
        assert parsed.finished
    assert max(counts.values()) <= 2
    for pair in sets["pairs"]:
        assert pair["q_chosen"] - pair["q_rejected"] >= 0.5 and pair["prompt"].startswith("<|im_start|>")
    assert all(-1 <= v["value"] <= 1 for v in sets["values"])


def test_extract_bad_input_is_one_line(tmp_path):
    from mathforge.errors import UserError

    with pytest.raises(UserError, match="tree file not found"):
        ex.main(["--trees", str(tmp_path / "none.jsonl"), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(UserError, match="selection must be uct or puct"):
        from mathforge.config import parse_config

        parse_config([SearchConfig], ["--selection", "greedy"])


# --- inference-time search --------------------------------------------------------------------------------


def test_majority_vote_on_a_hand_made_case(grader):
    answers = [
        "The answer is \\boxed{3}",
        "\\boxed{4}",
        None,
        "The answer is \\boxed{ 4 }",
        "\\boxed{3}",
        "\\boxed{4}",
    ]
    assert inference.vote(answers) == (1, 3)  # 4 wins 3 votes to 2; the first "4" represents it
    assert inference.vote([None, "no answer here at all\nat all"]) is None
    assert inference.vote(["\\boxed{7}", "\\boxed{8}"])[0] == 0  # a tie goes to the group seen first
    fracs = ["\\boxed{\\frac{1}{2}}", "\\boxed{2}", "\\boxed{0.5}", "\\boxed{2}"]
    assert inference.vote(fracs)[0] == 1
    assert inference.vote(fracs, grader=grader)[0] == 0  # with a grader 1/2 = 0.5: a 2-2 tie, seen first


def test_weighted_vote_sums_the_scores_of_each_answer(grader):
    from types import SimpleNamespace

    def solution(answer, completion):
        return SimpleNamespace(answer=answer, completion=completion, num_tokens=10)

    groups = [
        [
            solution("\\boxed{3}", "a"),
            solution("\\boxed{4}", "b"),
            solution("\\boxed{ 4 }", "c"),
            solution(None, "d"),
        ],
        [solution(None, "e")],
    ]
    scores = {"Pa": 0.9, "Pb": -0.2, "Pc": 0.0}

    def scorer(texts):
        return [scores[t] for t in texts]

    # 3 weighs (0.9 + 1) / 2 = 0.95, 4 weighs 0.4 + 0.5 = 0.9: the surer answer beats the more frequent one
    first, nothing = inference.weighted_vote(["P", "Q"], groups, scorer, grader)
    assert (first.answer, first.completion) == ("\\boxed{3}", "a")
    assert first.score == pytest.approx(0.95 / 1.85) and first.tokens == 40
    assert (nothing.answer, nothing.score, nothing.tokens) == (None, None, 10)
    # a less sure 3 (0.75) loses to the two votes for 4, represented by the better-scored of them
    scores["Pa"] = 0.5
    first, _ = inference.weighted_vote(["P", "Q"], groups, scorer, grader)
    assert (first.answer, first.completion) == ("\\boxed{ 4 }", "c")
    assert inference.best_of_n(["P", "Q"], groups, scorer)[0].completion == "a"  # best-of-N: the top score


def test_inference_modes_return_answers(problems, generator, executor):
    rows = [json.loads(line) for line in problems.read_text().splitlines()][:2]
    prompts = [steps.chat_prompt(generator.tokenizer, r["problem"]) for r in rows]

    def scorer(texts):  # any fixed judgement will do: favour text that prints something
        return [0.5 if "print(" in t else -0.5 for t in texts]

    counting = CountingGenerator(generator)
    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=256)
    groups = rollout(prompts, counting, executor, sampling, max_steps=5)
    results = {
        "majority": inference.majority_vote(groups),
        "best_of_n": inference.best_of_n(prompts, groups, scorer),
        "weighted_vote": inference.weighted_vote(prompts, groups, scorer),
    }
    before = len(counting.calls)
    beam_sampling = SamplingConfig(n=3, temperature=0.7, max_new_tokens=256)
    results["beam"] = inference.step_beam_search(prompts, counting, executor, scorer, beam_sampling, 2, 5)
    assert len(counting.calls) - before <= 5  # one call per depth for all problems and beams
    config = SearchConfig(num_rollouts=3, num_candidates=3, selection="puct", max_depth=5)
    results["mcts"] = inference.mcts(prompts, counting, executor, scorer, config)
    for mode, answers in results.items():
        assert len(answers) == len(prompts), mode
        assert all(a.tokens > 0 for a in answers), mode
        found = [a for a in answers if a.answer is not None]
        assert found, mode
        for a in found:
            assert steps.parse_completion(a.completion).answer == a.answer, mode
    assert all(-1 <= a.score <= 1 for a in results["mcts"] if a.score is not None)
