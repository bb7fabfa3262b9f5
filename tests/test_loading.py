import json

import pytest

from mathforge.data.loading import gold_answer, load_problems
from mathforge.errors import UserError


def test_math500_in_place(benchmarks):
    ds = load_problems(str(benchmarks / "math500.jsonl"))
    assert len(ds) == 500
    row = ds[0]
    assert row["id"] == "test/precalculus/807.json"
    assert row["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert {"problem", "answer", "id", "subject", "level", "solution"} <= set(ds.column_names)


def test_gsm8k_question_column_and_hash_answers(benchmarks):
    ds = load_problems(str(benchmarks / "gsm8k_test.jsonl"), max_problems=20)
    assert len(ds) == 20 and ds[0]["problem"].startswith("Janet")
    assert ds[0]["answer"] == "18"
    # The same gold, taken from the worked solution's `#### N` line instead.
    ds2 = load_problems(str(benchmarks / "gsm8k_test.jsonl"), answer_column="answer_text", max_problems=20)
    assert ds2["answer"] == ds["answer"]


def test_gold_answer_from_solution_formats():
    assert gold_answer("so $x = \\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert gold_answer("She makes 9 * 2 = 18.\n#### 18") == "18"
    assert gold_answer(" 42 ") == "42"


def test_folder_with_split_files(tmp_path):
    rows = [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": "4"}]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_problems(str(tmp_path), split="test")
    assert ds["problem"] == ["1+1?", "2+2?"] and ds["id"] == ["test-0", "test-1"]


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        load_problems(str(tmp_path / "missing.jsonl"))
    (tmp_path / "aime.jsonl").write_text('{"id": "2024-AIMEI-P1", "problem": "Find x.", "answer": "204"}\n')
    with pytest.raises(UserError, match="column 'nope' not in"):
        load_problems(str(tmp_path / "aime.jsonl"), problem_column="nope")
    with pytest.raises(UserError, match="no test.jsonl"):
        load_problems(str(tmp_path), split="test")
    (tmp_path / "weird.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(UserError, match="no problem column"):
        load_problems(str(tmp_path / "weird.jsonl"))


def test_slices_keep_the_ids_of_the_whole_split(tmp_path):
    rows = [{"question": f"{i}+1?", "answer": str(i + 1)} for i in range(10)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    full = load_problems(str(tmp_path))
    ids = dict(zip(full["problem"], full["id"]))
    for split, positions in [("train[3:6]", [3, 4, 5]), ("train[-2:]", [8, 9]), ("train[:20%]", [0, 1])]:
        part = load_problems(str(tmp_path), split=split)
        assert part["id"] == [f"train-{i}" for i in positions]
        assert all(ids[p] == i for p, i in zip(part["problem"], part["id"]))
    assert load_problems(str(tmp_path), split="train[4:]", max_problems=2)["id"] == ["train-4", "train-5"]
    with pytest.raises(UserError, match="bad split slice"):
        load_problems(str(tmp_path), split="train[a:b]")
