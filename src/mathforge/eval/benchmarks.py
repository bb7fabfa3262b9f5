"""The benchmark registry: where each benchmark lives on the Hub, its local file name, its columns.

A benchmark loads from its Hub dataset by default, or from ``<data_dir>/<local_file>`` when a local
folder is given (the JSONL copies in ``../shared/benchmarks`` follow these names). Either way the
result is what :func:`mathforge.data.loading.load_problems` returns (``id``, ``problem``, ``answer``
plus the source's other columns), with ``subject``/``level`` kept where the source has them.

Hub columns differ from the local copies (GSM8K's Hub ``answer`` is the worked solution, the local
one is the number), so each side names its own columns; ``None`` means "detect" (``problem`` or
``question``; ``answer`` or ``solution``), which the loader does. Gold answers that are lists
(OlympiadBench's ``final_answer``) are joined into one answer string.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mathforge.errors import UserError


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    hub_id: str
    hub_split: str
    local_file: str
    hub_config: str | None = None
    hub_problem_column: str | None = None
    hub_answer_column: str | None = None
    local_problem_column: str | None = None
    local_answer_column: str | None = None
    aliases: tuple[str, ...] = ()


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        # 500 MATH test problems of "Let's Verify Step by Step"; columns problem, solution, answer,
        # subject, level, unique_id (local copy: unique_id renamed id).
        Benchmark(
            "math500", "MATH-500", "HuggingFaceH4/MATH-500", "test", "math500.jsonl", aliases=("math",)
        ),
        # Hub: question, answer (worked solution ending "#### N"; the loader keeps N).
        # Local: id, question, answer (N), answer_text (the worked solution).
        Benchmark(
            "gsm8k",
            "GSM8K",
            "openai/gsm8k",
            "test",
            "gsm8k_test.jsonl",
            hub_config="main",
            aliases=("gsm8k_test",),
        ),
        # 30 problems of AIME I+II 2024: id, problem, solution, answer, url, year (split "train").
        Benchmark(
            "aime24", "AIME 2024", "HuggingFaceH4/aime_2024", "train", "aime24.jsonl", aliases=("aime2024",)
        ),
        # 30 problems of AIME I+II 2025 (lighteval's source): id, problem, solution, answer, url, year.
        Benchmark(
            "aime25", "AIME 2025", "yentinglin/aime_2025", "train", "aime25.jsonl", aliases=("aime2025",)
        ),
        # The 40-problem AMC 2023 set of the Qwen2.5-Math harness: id, question/problem, answer.
        Benchmark("amc23", "AMC 2023", "math-ai/amc23", "test", "amc23.jsonl", aliases=("amc2023",)),
        # OlympiadBench, open-ended text-only English math competition problems (674): question,
        # final_answer (a list of LaTeX strings), solution, ... ; the only split is "train".
        Benchmark(
            "olympiadbench",
            "OlympiadBench",
            "Hothan/OlympiadBench",
            "train",
            "olympiadbench.jsonl",
            hub_config="OE_TO_maths_en_COMP",
            hub_problem_column="question",
            hub_answer_column="final_answer",
            aliases=("olympiad",),
        ),
        # Minerva Math (OCWCourses, 272 problems): question, answer.
        Benchmark(
            "minerva",
            "Minerva Math",
            "math-ai/minervamath",
            "test",
            "minerva_math.jsonl",
            aliases=("minerva_math",),
        ),
        # College Math (MathScale, 2818 problems): question, answer (one JSONL file, hence "train").
        Benchmark(
            "college_math",
            "College Math",
            "qq8933/College_Math_Test",
            "train",
            "college_math.jsonl",
            aliases=("college",),
        ),
    ]
}
_ALIASES = {alias: b.name for b in BENCHMARKS.values() for alias in (b.name, *b.aliases)}


def get_benchmark(name: str) -> Benchmark:
    key = name.strip().lower().replace("-", "").replace(" ", "")
    if key not in _ALIASES:
        raise UserError(f"unknown benchmark '{name}' (choose from: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[_ALIASES[key]]


def _answer_text(value) -> str:
    """One gold string from a column value; lists (OlympiadBench) become "a, b"."""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v).strip() for v in value)
    return value


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None, max_problems: int | None = None):
    """Load a registered benchmark from the Hub, or from ``data_dir/<local_file>`` if ``data_dir`` is set."""
    from mathforge.data.loading import gold_answer, load_problems

    bench = get_benchmark(name)
    if data_dir is not None:
        path = Path(data_dir).expanduser() / bench.local_file
        if not Path(data_dir).expanduser().is_dir():
            raise UserError(f"data_dir not found: {data_dir}")
        if not path.is_file():
            raise UserError(
                f"no {bench.local_file} in {data_dir} (the local file of benchmark '{bench.name}')"
            )
        source, split, config = str(path), "test", None
        problem_column, answer_column = bench.local_problem_column, bench.local_answer_column
    else:
        source, split, config = bench.hub_id, bench.hub_split, bench.hub_config
        problem_column, answer_column = bench.hub_problem_column, bench.hub_answer_column
    ds = load_problems(
        source,
        split,
        dataset_config=config,
        problem_column=problem_column,
        answer_column=answer_column,
        max_problems=max_problems,
    )
    if answer_column and len(ds) and isinstance(ds[0][answer_column], (list, tuple)):
        ds = ds.map(
            lambda row: {"answer": gold_answer(_answer_text(row[answer_column]))}, desc="gold answers"
        )
    return ds


__all__ = ["BENCHMARKS", "Benchmark", "get_benchmark", "load_benchmark"]
