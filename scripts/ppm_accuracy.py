"""Train a PPM on toy step pairs and print its held-out pairwise accuracy (the construction tests/test_ppm.py uses).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/ppm_accuracy.py [--out runs/ppm-accuracy] [--policy DIR]
        [--kinds name,number,operation] [--final]

Pairs, built from the toy task's executed teacher solutions: at a step, chosen = the teacher's step with
its output, rejected = the same step corrupted, with the output that code really prints. Corruptions:
"name" (a variable misspelt: the NameError a model's typo raises; the default, as in the tests),
"number" (a number changed) and "operation" (an operator swapped) -- the last two are subtle (a
wrong value, no error) and need far more training than a CPU run gives. `--final` adds final-step
pairs (the teacher's answer against a wrong number). Both sides share the prefix (chat prompt + the
teacher's previous steps), as search extraction's pairs do. Held-out pairs come from the toy *test*
split, whose problems never occur in the train split.

The PPM starts from `--policy` (default: a tiny model fine-tuned here with the toy SFT recipe, as the
pipeline initialises the PPM from the current policy), is trained with `mathforge ppm` and the tiny
recipe (1 epoch), and the held-out pairs are then scored through `load_scorer`, the path search uses.
Exit code 0 when the held-out pairwise accuracy is >= 0.75.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import random
import re
import sys
from pathlib import Path

from mathforge import steps

REPO = Path(__file__).resolve().parents[1]
_NUMBER = re.compile(r"(?<![\w.])\d+(?![\w.])")
_OPERATOR = re.compile(r"(?<=[\w)\] ])(//|[+\-*/%])(?=[ \w(])")
_NAME = re.compile(r"(?<![\w.'\"])[a-z_][a-z0-9_]*(?![\w'\"])")
_SWAPS = {"+": "-*", "-": "+*", "*": "+-", "/": "*-", "//": "*%", "%": "/*"}
_KEEP = {
    "print",
    "import",
    "from",
    "assert",
    "and",
    "or",
    "not",
    "in",
    "for",
    "if",
    "else",
    "range",
    "math",
    "int",
}
KINDS = ("number", "operation", "name")  # step corruptions; "answer" is the final-step pair


def run_steps(codes: list[str]) -> list[str]:
    """What each step prints, state carried across steps, errors shown as the executor shows them.

    Run in-process: this is the teacher's own code with a number or operator changed, never model output.
    """
    namespace, outputs = {}, []
    for code in codes:
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                exec(code, namespace)
            outputs.append(buffer.getvalue())
        except Exception as err:
            error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            outputs.append(buffer.getvalue() + error)
    return outputs


def corrupt(code: str, rng: random.Random, kind: str) -> str | None:
    """`code` with one number ("number"), binary operator ("operation") or variable name ("name", a
    misspelling, so usually a NameError) changed; comments untouched."""
    lines = code.split("\n")
    pattern = {"number": _NUMBER, "operation": _OPERATOR, "name": _NAME}[kind]
    spots = []
    for i, line in enumerate(lines):
        body = line.split("#", 1)[0]
        if kind == "name" and body.lstrip().startswith(("import", "from")):
            continue
        for m in pattern.finditer(body):
            if m.group(0) not in _KEEP and "**" not in body[max(m.start() - 1, 0) : m.end() + 1]:
                spots.append((i, m))
    if not spots:
        return None
    i, m = rng.choice(spots)
    if kind == "number":
        value = int(m.group(0))
        new = str(max(0, value + rng.choice((-1, 1)) * rng.randint(1, max(2, value // 3 + 1))))
    elif kind == "operation":
        new = rng.choice(_SWAPS[m.group(0)])
    else:
        new = m.group(0) + "s"
    if new == m.group(0):
        return None
    lines[i] = lines[i][: m.start()] + new + lines[i][m.end() :]
    return "\n".join(lines)


def toy_pairs(
    rows,
    tokenizer,
    seed: int = 0,
    per_step: int = 2,
    kinds=KINDS,
    final: bool = True,
    max_depth: int | None = None,
) -> list[dict]:
    """Preference pairs in the search-extraction format (prompt/chosen/rejected/id/depth/q_*), plus `kind`:
    up to `per_step` corrupted versions of each teacher step (of `kinds`), and the final-answer pair."""
    rng = random.Random(seed)
    pairs = []
    for row in rows:
        codes = [s.code for s in steps.parse_completion(row["solution"]).steps]
        outputs = run_steps(codes)
        done = [steps.Step(c, o) for c, o in zip(codes, outputs)]
        head = steps.chat_prompt(tokenizer, row["problem"])

        def add(depth, kind, chosen, rejected, _row=row, _head=head, _done=done):
            prompt = _head + steps.render_solution(_done[:depth])
            pairs.append(
                {"id": _row["id"], "depth": depth, "kind": kind, "prompt": prompt, "chosen": chosen,
                 "rejected": rejected, "q_chosen": 1.0, "q_rejected": -1.0}
            )  # fmt: skip

        for depth, code in enumerate(codes[: max_depth if max_depth is not None else len(codes)]):
            seen = set()
            for kind in rng.sample(kinds, len(kinds)) * per_step:
                bad = corrupt(code, rng, kind)
                if bad is None or bad in seen:
                    continue
                bad_output = run_steps(codes[:depth] + [bad])[-1]
                if bad_output == outputs[depth]:
                    continue  # same output: not a clear negative
                seen.add(bad)
                chosen = steps.render_step(code) + steps.render_output(outputs[depth])
                add(depth, kind, chosen, steps.render_step(bad) + steps.render_output(bad_output))
                if len(seen) == per_step:
                    break
        if final:  # final step: the teacher's answer against a wrong one
            wrong = corrupt(row["answer"].replace("/", " / "), rng, "number")
            if wrong is not None:
                answer = steps.render_answer(steps.boxed_answer(row["answer"]))
                add(
                    len(codes),
                    "answer",
                    answer,
                    steps.render_answer(steps.boxed_answer(wrong.replace(" / ", "/"))),
                )
    return pairs


def write_pairs(toy_dir: Path, tokenizer, out: Path, **kwargs) -> dict[str, int]:
    """train.jsonl / test.jsonl of toy pairs from a toy dataset folder; returns the pair counts."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, seed in (("train", 0), ("test", 1)):
        rows = [json.loads(line) for line in (Path(toy_dir) / f"{split}.jsonl").read_text().splitlines()]
        pairs = toy_pairs(rows, tokenizer, seed=seed, **kwargs)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        counts[split] = len(pairs)
    return counts


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ppm-accuracy")
    parser.add_argument(
        "--policy", default=None, help="policy to start from (default: build + SFT a tiny one)"
    )
    parser.add_argument("--n_train", type=int, default=400, help="toy train problems (about 5 pairs each)")
    parser.add_argument("--n_test", type=int, default=60, help="toy test problems (about 5 pairs each)")
    parser.add_argument("--sft_steps", type=int, default=300)
    parser.add_argument("--kinds", default="name", help=f"step corruptions, comma-separated, of {KINDS}")
    parser.add_argument("--final", action="store_true", help="add the final-answer pairs")
    parser.add_argument(
        "--ppm_args", default="", help="extra `mathforge ppm` options, e.g. '--max_steps 400'"
    )
    args = parser.parse_args(argv)
    kinds = tuple(args.kinds.split(","))

    from transformers import AutoTokenizer

    from mathforge import ppm, sft
    from mathforge.data.toy import write_dataset
    from mathforge.tiny_model import build

    out = Path(args.out)
    toy = out / "toy"
    if not (toy / "test.jsonl").exists():
        write_dataset(toy, n_train=args.n_train, n_test=args.n_test, seed=0, progress=False)
    policy = Path(args.policy) if args.policy else out / "sft"
    if not args.policy and not (policy / "model.safetensors").exists():
        build(out / "tiny-model", size="tiny", seed=0, overwrite=True)
        sft.main(["--config", str(REPO / "recipes/tiny/sft/config_toy.yaml"), "--model_name_or_path",
                  str(out / "tiny-model"), "--dataset_name", str(toy), "--output_dir", str(policy),
                  "--max_steps", str(args.sft_steps), "--per_device_train_batch_size", "8", "--save_steps",
                  str(args.sft_steps), "--warmup_steps", "20"])  # fmt: skip
    counts = write_pairs(
        toy, AutoTokenizer.from_pretrained(policy), out / "pairs", kinds=kinds, final=args.final
    )
    print(f"pairs: {counts['train']} train, {counts['test']} held out (toy test split)")

    ppm.main(["--config", str(REPO / "recipes/tiny/ppm/config_toy.yaml"), "--model_name_or_path", str(policy),
              "--dataset_name", str(out / "pairs"), "--dataset_test_split", "test",
              "--output_dir", str(out / "ppm"), *args.ppm_args.split()])  # fmt: skip

    # Score the held-out pairs again through the scorer search uses: same pairs, same winners.
    scorer = ppm.load_scorer(str(out / "ppm"), batch_size=16, device="cpu")
    test = [json.loads(line) for line in (out / "pairs" / "test.jsonl").read_text().splitlines()]
    scores = scorer.score_pairs(
        [p["prompt"] for p in test], [p["chosen"] for p in test], [p["rejected"] for p in test]
    )
    by_kind = collections.defaultdict(list)
    for pair, (c, r) in zip(test, scores):
        by_kind[pair["kind"]].append(c > r)
    accuracy = sum(sum(v) for v in by_kind.values()) / len(test)
    trained = json.loads((out / "ppm" / "ppm_metrics.json").read_text())["eval_pairwise_accuracy"]
    for kind, wins in sorted(by_kind.items()):
        print(f"  {kind:<9} {sum(wins) / len(wins):.3f}  ({len(wins)} pairs)")
    print(
        f"held-out pairwise accuracy: {accuracy:.3f} on {len(test)} pairs (trainer's metric: {trained:.3f})"
    )
    return accuracy


if __name__ == "__main__":
    sys.exit(0 if main() >= 0.75 else 1)
