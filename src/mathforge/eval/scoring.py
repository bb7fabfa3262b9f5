"""Grading samples, and scoring completions produced elsewhere (`mathforge eval --predictions FILE`).

A predictions file is JSONL, one completion per line: an id column (``--id_column``, default ``id``),
a completion column (``completion``/``prediction``/``response``/``output``/``generation``, or
``--prediction_column``), and the gold either in a column (``gold``, or ``--gold_column``) or by
joining the id to a benchmark (a ``benchmark`` column, or ``--benchmarks NAME`` / ``--dataset_name``).
Several lines with one id are several samples of that problem; an optional ``tokens`` column feeds
the token metrics (else the tokens are counted with ``--model_name_or_path``'s tokenizer, if given).
The same :class:`~mathforge.grader.Grader` decides as in a generating run; ``--answer_extraction``
chooses how a completion's answer is found (:data:`mathforge.grader.EXTRACTION_POLICIES`), for all
benchmarks or per benchmark (:func:`extraction_policies`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mathforge.errors import UserError

PREDICTION_COLUMNS = ("completion", "prediction", "response", "output", "generation")


def extraction_policies(value: str) -> tuple[str, dict[str, str]]:
    """Parse ``--answer_extraction``: a policy for all benchmarks, and/or ``name=policy`` items.

    ``"strict"`` -> ("strict", {}); ``"lenient, math500=strict"`` -> ("lenient", {"math500": "strict"}).
    Items are separated by commas or spaces; benchmark names are matched as given (their registry names).
    """
    from mathforge.grader import EXTRACTION_POLICIES

    default, per_benchmark = "strict", {}
    for item in value.replace(",", " ").split():
        name, _, policy = item.rpartition("=")
        if policy not in EXTRACTION_POLICIES:
            raise ValueError(
                f"answer_extraction: unknown policy '{policy}' in '{value}'; "
                f"use one of {', '.join(EXTRACTION_POLICIES)}, or NAME=POLICY per benchmark"
            )
        if name:
            per_benchmark[name] = policy
        else:
            default = policy
    return default, per_benchmark


def extraction_for(value: str, benchmark: str) -> str:
    """The extraction policy ``--answer_extraction`` gives ``benchmark``."""
    default, per_benchmark = extraction_policies(value)
    return per_benchmark.get(benchmark, default)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path} line {number} is not valid JSON: {err.msg}") from None
            if not isinstance(row, dict):
                raise UserError(f"{path} line {number} is not a JSON object")
            rows.append(row)
    if not rows:
        raise UserError(f"{path} holds no rows")
    return rows


def score_predictions(config, data) -> tuple[list[dict], dict]:
    """Grade the completions in ``config.predictions`` (see the module docstring) with the same grader."""
    from mathforge.data.loading import load_from_args
    from mathforge.eval.benchmarks import BENCHMARKS, get_benchmark, load_benchmark
    from mathforge.grader import Grader

    rows = read_jsonl(config.predictions)
    columns = sorted(set().union(*rows))
    source = config.predictions

    def need(column: str, fix: str) -> str:
        missing = sum(column not in r for r in rows)
        if missing:
            raise UserError(
                f"column '{column}' missing in {missing} row(s) of {source} (its columns: {', '.join(columns)}); {fix}"
            )
        return column

    id_col = need(config.id_column, "fix --id_column")
    pred_col = config.prediction_column or next((c for c in PREDICTION_COLUMNS if c in columns), None)
    if pred_col is None:
        raise UserError(
            f"no completion column in {source} (its columns: {', '.join(columns)}); set --prediction_column"
        )
    need(pred_col, "fix --prediction_column")
    gold_col = config.gold_column or ("gold" if "gold" in columns else None)
    if gold_col:
        need(gold_col, "fix --gold_column")
    default_bench = None
    if "benchmark" in columns:
        need("benchmark", "give every row its benchmark")
    else:
        names = list(config.benchmarks or []) or ([data.dataset_name] if data.dataset_name else [])
        if len(names) != 1:
            if gold_col is None:
                raise UserError(
                    f"{source} has no gold column and no 'benchmark' column: name one benchmark with --benchmarks, "
                    "or set --gold_column"
                )
            names = ["predictions"]
        default_bench = names[0]

    custom = data.dataset_name  # a problem set given as --dataset_name joins like a benchmark

    def bench_name(row) -> str:
        name = str(row.get("benchmark") or default_bench)
        if name in (custom, "predictions"):
            return name
        if gold_col is None:
            return get_benchmark(name).name  # unknown: a one-line error naming the choices
        return name if name.strip().lower().replace("-", "") not in BENCHMARKS else get_benchmark(name).name

    joined: dict[str, dict[str, dict]] = {}
    if gold_col is None:
        for name in dict.fromkeys(bench_name(r) for r in rows):
            ds = load_from_args(data) if name == custom else load_benchmark(name, config.data_dir)
            joined[name] = {str(r["id"]): r for r in ds}
    samples, info, seen = [], {}, {}
    for row in rows:
        name = bench_name(row)
        pid = str(row[id_col])
        gold_row = joined.get(name, {}).get(pid) if gold_col is None else row
        if gold_row is None:
            raise UserError(
                f"id '{pid}' of {source} is not in benchmark '{name}' (check --id_column and --benchmarks)"
            )
        sample = seen[(name, pid)] = seen.get((name, pid), -1) + 1
        tokens = row.get("tokens")
        if tokens is not None and (not isinstance(tokens, int) or tokens < 0):
            raise UserError(f"'tokens' of id '{pid}' in {source} is {tokens!r}, not a token count")
        record = {
            "benchmark": name,
            "id": pid,
            "sample": sample,
            "completion": str(row[pred_col]),
            "gold": str(gold_row["answer"] if gold_col is None else row[gold_col]),
            "tokens": tokens,
        }
        for column in ("subject", "level"):
            if gold_row.get(column) is not None:
                record[column] = gold_row[column]
        samples.append(record)
        if name not in info:
            info[name] = ((get_benchmark(name).title if name in BENCHMARKS else name), 0.0)
    if any(s["tokens"] is None for s in samples) and config.model_name_or_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
        for s in samples:
            if s["tokens"] is None:
                s["tokens"] = len(tokenizer(s["completion"], add_special_tokens=False)["input_ids"])
    order = {}
    for s in samples:
        order.setdefault((s["benchmark"], s["id"]), len(order))
        s["index"] = order[(s["benchmark"], s["id"])]
    policies = [extraction_for(config.answer_extraction, s["benchmark"]) for s in samples]
    with Grader(timeout=config.grade_timeout_s, workers=2) as grader:
        completions = [s["completion"] for s in samples]
        verdicts = grader.grade_many(completions, [s["gold"] for s in samples], policies)
        for s, policy, ok in zip(samples, policies, verdicts):
            s["extracted"], s["correct"] = grader.final_answer(s["completion"], policy), ok
    return samples, info
