"""The toy task generator: exact answers (recomputed independently), executed teacher solutions,
determinism, disjoint splits, variety, and the `mathforge data toy` command."""

from __future__ import annotations

import collections
import hashlib
import json
import random
import re
from fractions import Fraction

import pytest
import sympy

from mathforge.cli import main as cli_main
from mathforge.data import toy
from mathforge.errors import UserError
from mathforge.executor import Executor, ExecutorConfig
from mathforge.steps import OUTPUT_OPEN, boxed_answer, parse_completion

N_TRAIN, N_TEST = 21 * 12, 21 * 4  # a multiple of families x levels, so each combination appears evenly


@pytest.fixture(scope="module")
def executor():
    with Executor(ExecutorConfig()) as ex:  # one sandbox for the module: starting one costs ~1 s
        yield ex


@pytest.fixture(scope="module")
def train(executor):
    return toy.generate_problems(N_TRAIN, "train", seed=0, executor=executor)


@pytest.fixture(scope="module")
def test_split(executor):
    return toy.generate_problems(N_TEST, "test", seed=0, executor=executor)


def _solve(equations, unknown):
    (solution,) = sympy.solve(equations, dict=True)
    return solution[unknown]


def recompute(kind: str, p: dict) -> Fraction | int:
    """The answer from the record's params, computed independently of the generator (sympy, brute force)."""
    R, x, y = sympy.Rational, sympy.Symbol("x"), sympy.Symbol("y")
    if kind == "story":
        value = p["start"]
        for op in p["ops"].split(","):
            name, arg = op.split(":")
            if name in ("group_add", "group_sub"):
                k, m = map(int, arg.split("x"))
                value += k * m if name == "group_add" else -k * m
            elif name in ("add", "sub"):
                value += int(arg) if name == "add" else -int(arg)
            elif name == "mul":
                value *= int(arg)
            else:
                assert value % int(arg) == 0
                value = sympy.Integer(value) / int(arg)
        return value
    if kind == "percent_of":
        return R(p["p"], 100) * p["total"]
    if kind == "what_percent":
        return _solve([sympy.Eq(x / 100 * p["whole"], p["part"])], x)
    if kind == "percent_change":
        return p["price"] * (1 + (1 if p["up"] else -1) * R(p["p"], 100))
    if kind == "successive":
        first, second = (1, -1) if p["first_up"] else (-1, 1)
        return p["price"] * (1 + first * R(p["p"], 100)) * (1 + second * R(p["q"], 100))
    if kind == "reverse_discount":
        return p["original"]
    if kind == "one_sided":
        return _solve([sympy.Eq(p["a"] * x + p["b"], p["c"])], x)
    if kind == "two_sided":
        return _solve([sympy.Eq(p["a"] * x + p["b"], p["c"] * x + p["d"])], x)
    if kind == "brackets":
        return _solve([sympy.Eq(p["a"] * (x + p["b"]) + p["c"], p["d"] * (x - p["e"]))], x)
    if kind == "tickets":  # x adults, y children
        eqs = [sympy.Eq(x + y, p["total"]), sympy.Eq(p["adult_price"] * x + p["child_price"] * y, p["money"])]
        return _solve(eqs, y)
    if kind == "heads_legs":  # x chickens, y cows
        return _solve([sympy.Eq(x + y, p["heads"]), sympy.Eq(2 * x + 4 * y, p["legs"])], y)
    if kind in ("two_terms", "three_terms"):
        expr = f"({p['a']}/{p['b']}) {p['op']} ({p['c']}/{p['d']})"
        if kind == "three_terms":
            expr += f" {p['mul']} ({p['e']}/{p['f']})"
        return sympy.sympify(expr)  # sympy's parser applies the precedence
    if kind == "pages":
        return p["pages"] * (1 - R(p["p"], p["q"])) * (1 - R(p["r"], p["s"]))
    if kind == "tank":
        return R(p["p"], p["q"]) * p["volume"] * (1 - R(p["r"], p["s"])) + p["added"]
    if kind == "gcd":
        return sympy.gcd(p["a"], p["b"])
    if kind == "lcm":
        return sympy.lcm(p["a"], p["b"])
    if kind == "lcm3":
        return sympy.ilcm(p["a"], p["b"], p["c"])
    if kind == "ribbons":
        return (p["a"] + p["b"]) / sympy.gcd(p["a"], p["b"])
    if kind == "tiles":
        return p["a"] * p["b"] / sympy.gcd(p["a"], p["b"]) ** 2
    if kind == "lcm_minus_gcd":
        return sympy.ilcm(p["a"], p["b"], p["c"]) - sympy.igcd(p["a"], p["b"], p["c"])
    if kind == "remainder":
        return sympy.Mod(p["a"], p["m"])
    if kind == "power":
        return p["b"] ** p["e"] % p["m"]
    if kind == "clock":
        hour = p["h"]
        for _ in range(p["k"] % 12):
            hour = hour % 12 + 1
        return hour
    if kind == "power_sum":
        return (p["a"] ** p["e"] + p["b"] ** p["f"]) % p["m"]
    if kind == "congruence":
        return next(v for v in range(1, p["m"] + 1) if p["a"] * v % p["m"] == p["b"])
    if kind == "choose":
        return sympy.binomial(p["n"], p["k"])
    if kind == "menu":
        return p["a"] * p["b"] * p["c"]
    if kind == "podium":
        return sympy.ff(p["n"], 3)
    if kind == "committee":
        return sympy.binomial(p["w"], p["a"]) * sympy.binomial(p["m"], p["b"])
    if kind == "games":
        return sympy.binomial(p["n"], 2) * p["times"]
    if kind == "captain":
        return sympy.binomial(p["n"], p["k"]) * p["k"]
    if kind == "at_least_one":
        return sum(
            sympy.binomial(p["w"], i) * sympy.binomial(p["m"], p["k"] - i) for i in range(1, p["k"] + 1)
        )
    if kind == "not_together":  # teams without the pair: neither of them, or exactly one
        return sympy.binomial(p["n"] - 2, p["k"]) + 2 * sympy.binomial(p["n"] - 2, p["k"] - 1)
    raise AssertionError(f"no independent check for kind {kind}")


def _as_fraction(value) -> Fraction:
    value = sympy.sympify(value)
    assert value.is_Rational, value
    return Fraction(int(value.p), int(value.q))


def test_answers_match_independent_recomputation(train, test_split):
    kinds = set()
    for record in train + test_split:
        kinds.add(record["kind"])
        expected = _as_fraction(recompute(record["kind"], record["params"]))
        assert Fraction(record["answer"]) == expected, record["problem"]
        assert record["answer"] == str(expected)  # canonical: integer or reduced fraction a/b
    assert len(kinds) >= 25  # every kind was exercised


def test_problem_text_holds_the_numbers(train):
    skip = {"up", "first_up", "times", "original"}  # flags, a word ("twice"), or the unknown itself
    for record in train:
        if record["kind"] == "story":
            assert str(record["params"]["start"]) in record["problem"]
            continue
        for name, value in record["params"].items():
            if "last digit" in record["problem"] and name == "m":
                continue  # mod 10, said in words
            if isinstance(value, int) and name not in skip:
                assert str(abs(value)) in record["problem"], (name, record["problem"])


def test_every_family_and_level_appears(train, test_split):
    for records in (train, test_split):
        combos = collections.Counter((r["family"], r["level"]) for r in records)
        assert set(combos) == {(f, lv) for f in toy.FAMILIES for lv in toy.LEVELS}
        assert len(set(combos.values())) == 1  # balanced


def test_teacher_solutions_parse_and_end_with_the_answer(train):
    for record in train:
        solution = parse_completion(record["solution"])
        assert solution.steps and solution.answer == boxed_answer(record["answer"])
        assert all(OUTPUT_OPEN not in step.code for step in solution.steps)
        outputs = re.findall(r"<output>\n(.*?)</output>", record["solution"], re.DOTALL)
        assert len(outputs) == len(solution.steps)  # every step was executed
        assert outputs[-1].strip().splitlines()[-1] == record["answer"]
        assert "Error" not in record["solution"]


def test_teacher_code_really_computes_the_answer(train):
    """Re-run a sample of teacher programs in plain Python, independently of the executor."""
    for record in train[::7]:
        env: dict = {}
        for step in parse_completion(record["solution"]).steps:
            exec(step.code, env)  # trusted: our own generated teacher code
        last = [line for line in step.code.splitlines() if line.startswith("print(")][-1]
        assert str(eval(last[len("print(") : -1], env)) == record["answer"]


def test_a_forced_style_renders_the_same_problem_in_that_style():
    # rl_tokens.py measures each style's length on the same problems: short is at most 2 steps with the
    # numbers in place, verbose restates the problem first; all print the same answer
    for family, level, plan, _, digest in toy.iter_plans(14, "test", 0, toy.LEVELS, toy.FAMILIES):
        programs = {s: toy.teacher_program(plan, random.Random(digest), s) for s in toy.STYLES}
        assert len(programs["short"]) <= 2 and programs["verbose"][0].startswith("# Find ")
        assert len(programs["standard"]) == len(plan.units)
        for codes in programs.values():
            env: dict = {}
            for code in codes:
                exec(code.replace("print(", "_ = ("), env)  # trusted teacher code; prints silenced
            assert str(Fraction(env[plan.units[-1].var])) == str(Fraction(plan.answer)), (family, level)
    with pytest.raises(ValueError, match="unknown style 'terse'"):
        toy.teacher_program(plan, random.Random(0), "terse")


def test_style_weights_choose_the_teacher_styles():
    verbose_only = list(toy.iter_plans(21, "train", 0, toy.LEVELS, toy.FAMILIES, style_weights=(0, 0, 1)))
    assert all(codes[0].startswith("# Find ") for *_, codes, _ in verbose_only)
    short_only = list(toy.iter_plans(21, "train", 0, toy.LEVELS, toy.FAMILIES, (1, 0, 0), recheck_rate=0))
    assert all(len(codes) <= 2 and not codes[0].startswith("# Find ") for *_, codes, _ in short_only)
    with pytest.raises(ValueError, match="style_weights"):
        toy.ToyDataConfig(style_weights=[1, 1])


def test_recheck_rate_adds_a_redundant_tail_to_the_same_problems():
    # the re-check tail is the verbosity stage-2 RL should cut: the same problems are drawn whatever the
    # rate, and a re-checking solution is the plain one plus one step that restates the question and
    # prints the answer again (so it is exactly as correct without that step)
    def plans(rate):
        return list(toy.iter_plans(70, "train", 0, toy.LEVELS, toy.FAMILIES, (1, 1, 0), recheck_rate=rate))

    never, half, always = plans(0), plans(0.5), plans(1)
    assert [p[4] for p in never] == [p[4] for p in half] == [p[4] for p in always]
    for (*_, plain, _), (*_, plan, checked, _) in zip(never, always):
        assert checked[:-1] == plain and checked[-1].startswith(toy.RECHECK_COMMENT)
        assert plan.goal in checked[-1]
        printed: list = []
        env: dict = {"print": lambda *values, out=printed: out.append(values)}
        for code in checked:
            exec(code, env)  # trusted teacher code
        assert printed[-1] == printed[-2] == (Fraction(plan.answer),), plan.text
    share = sum(len(h[3]) > len(n[3]) for n, h in zip(never, half)) / len(never)
    assert 0.3 < share < 0.7
    with pytest.raises(ValueError, match="recheck_rate"):
        toy.ToyDataConfig(recheck_rate=1.5)


def test_solution_lengths_vary(train):
    lengths = collections.Counter(len(parse_completion(r["solution"]).steps) for r in train)
    assert min(lengths) <= 2 and max(lengths) >= 6 and len(lengths) >= 5
    verbose = [r for r in train if "assert " in r["solution"] or "should print True" in r["solution"]]
    assert len(verbose) > len(train) // 10  # some solutions re-check their result
    plain = [r for r in train if toy.RECHECK_COMMENT not in r["solution"]]  # styles only, no re-check
    chars = collections.defaultdict(list)
    for r in plain:
        chars[r["family"], r["level"]].append(len(r["solution"]))
    spread = [max(c) / min(c) for c in chars.values() if len(c) >= 2]
    assert sum(x > 1.4 for x in spread) >= len(spread) // 2  # same problem type, different verbosity


def test_wording_varies(train):
    for family in toy.FAMILIES:
        openings = {" ".join(r["problem"].split()[:2]) for r in train if r["family"] == family}
        names = {w for r in train if r["family"] == family for w in r["problem"].split() if w in toy.NAMES}
        assert len(openings) >= 3 or len(names) >= 5, family


def test_deterministic_for_a_seed(executor):
    a = toy.generate_problems(42, "train", seed=7, executor=executor)
    b = toy.generate_problems(42, "train", seed=7, executor=executor)
    c = toy.generate_problems(42, "train", seed=8, executor=executor)
    assert json.dumps(a) == json.dumps(b)
    assert [r["id"] for r in a] != [r["id"] for r in c]


def test_splits_disjoint_for_large_n():
    # Plans only (no execution): the split logic is the same as in generate_problems.
    seen = {}
    for split, n in (("train", 12000), ("test", 3000)):
        plans = list(toy.iter_plans(n, split, 3, toy.LEVELS, toy.FAMILIES))
        digests = {digest for *_, digest in plans}
        texts = {plan.text for _, _, plan, _, _ in plans}
        assert len(digests) == len(texts) == n  # deduplicated
        assert all(toy.split_of(d) == split for d in digests)
        seen[split] = (digests, texts)
    assert not seen["train"][0] & seen["test"][0]
    assert not seen["train"][1] & seen["test"][1]


def test_split_check_catches_overlap(train, test_split):
    toy.check_disjoint(train, test_split)
    with pytest.raises(AssertionError):
        toy.check_disjoint(train, test_split + train[:1])


def test_corpus_has_problems_and_steps():
    texts = list(toy.corpus(40, seed=1))
    assert len(texts) == 40
    for text in texts:
        solution = text.split("\nassistant\n", 1)[1]
        assert "<step>" in solution and "\\boxed{" in solution and "<output>" not in solution


def _digest_dir(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def test_cli_writes_files_deterministically(tmp_path, capsys):
    args = ["data", "toy", "--n_train", "42", "--n_test", "21", "--seed", "5", "--levels", "1", "2"]
    assert cli_main([*args, "--output_dir", str(tmp_path / "a")]) == 0
    assert cli_main([*args, "--output_dir", str(tmp_path / "b")]) == 0
    assert _digest_dir(tmp_path / "a") == _digest_dir(tmp_path / "b")
    assert sorted(f.name for f in (tmp_path / "a").iterdir()) == ["meta.json", "test.jsonl", "train.jsonl"]
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["counts"] == {"train": 42, "test": 21} and meta["levels"] == [1, 2]
    rows = [json.loads(line) for line in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 42 and {r["level"] for r in rows} == {1, 2}
    assert set(rows[0]) >= {"id", "problem", "answer", "family", "level", "solution"}


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--families", "geometry"], "unknown family 'geometry'"),
        (["--levels", "9"], "unknown level 9"),
        (["--n_train", "many"], "n_train"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, capsys, bad, message):
    assert cli_main(["data", "toy", "--output_dir", str(tmp_path), *bad]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_generate_problems_rejects_unknown_family():
    with pytest.raises(UserError, match="unknown family"):
        toy.generate_problems(3, families=["geometry"])


def test_batched_execution_matches_step_by_step(executor):
    """Teacher programs run as one sandbox step each (fast path); outputs equal a step-by-step run."""
    programs = [codes for *_, codes, _ in toy.iter_plans(42, "train", 9, toy.LEVELS, toy.FAMILIES)]
    fast = toy.execute_programs(programs, executor=executor)
    assert fast == toy.execute_programs(programs, per_step=True, executor=executor)
