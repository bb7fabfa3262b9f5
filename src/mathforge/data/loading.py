"""Load math problems for every stage: a Hub dataset id or a local JSONL/JSON/Parquet file or folder.

Whatever the source, the result is a `datasets.Dataset` with (at least) the columns

* ``id``: a stable identifier: the source's id column if it has one, else ``"<name>-<row>"`` with
  ``<row>`` the row's position in the WHOLE split, so that a slice (``train[100:200]``, ``max_problems``)
  or a data-parallel shard of it names every problem as the full split does;
* ``problem``: the question text;
* ``answer``: the gold answer as a short string (a MATH ``\\boxed{}`` or GSM8K ``#### N`` solution is
  reduced to its answer);

and every other column of the source, untouched. Column names are found automatically
(``problem``/``question``, ``answer``/``solution``/``answer_text``) or given explicitly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mathforge.config import is_local, resolve
from mathforge.errors import UserError

PROBLEM_COLUMNS = ("problem", "question", "prompt", "query")
ANSWER_COLUMNS = ("answer", "final_answer", "gt", "solution", "answer_text")
# The `datasets` builder that reads each of DATA_FILE_SUFFIXES.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class DataArguments:
    """Where problems come from; shared by the stages that read problems (search, eval, RL)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id, or a local .jsonl/.json/.parquet file, or a folder holding <split>.jsonl."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(
        default="train",
        metadata={
            "help": "Split to read (Hub, or <split>.jsonl in a folder), optionally sliced as datasets "
            "does it: train[100:200], train[-500:]. Ids count rows of the whole split either way."
        },
    )
    problem_column: str | None = field(
        default=None, metadata={"help": f"Column with the question; default: first of {PROBLEM_COLUMNS}."}
    )
    answer_column: str | None = field(
        default=None, metadata={"help": f"Column with the gold answer; default: first of {ANSWER_COLUMNS}."}
    )
    max_problems: int | None = field(default=None, metadata={"help": "Keep only the first N problems."})


def gold_answer(value) -> str:
    """Reduce a gold column value to the answer: the last ``\\boxed{}`` of a solution, the number after
    GSM8K's ``####``, or the value itself (stripped)."""
    from mathforge.grader import extract_answer

    text = str(value).strip()
    if "\\boxed" in text or "\\fbox" in text or re.search(r"^####", text, re.MULTILINE):
        extracted = extract_answer(text)
        if extracted is not None:
            return extracted
    return text


def local_data_file(name: str, split: str) -> Path | None:
    """The file a local dataset name reads (:func:`mathforge.config.is_local`): the file itself, or
    ``<split>.jsonl``/``.json``/``.parquet`` in a folder; None for a Hub id. One-line errors for a missing or
    unsupported file and for a folder without that split."""
    if not is_local(name):
        return None
    path = Path(resolve(name))
    if path.is_dir():
        for suffix in BUILDERS:
            candidate = path / f"{split}{suffix}"
            if candidate.is_file():
                return candidate
        raise UserError(f"no {split}.jsonl/.json/.parquet in folder {path} (choose another --dataset_split)")
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    if path.suffix not in BUILDERS:
        raise UserError(f"unsupported data file {path}: use .jsonl, .json or .parquet")
    return path


def read_dataset(name: str, split: str = "train", config: str | None = None):
    """One split of a dataset as a `datasets.Dataset`: a local file or folder (:func:`local_data_file`), or a
    Hub dataset (``config``: its configuration name, default None). Unreadable data is a one-line error."""
    import datasets

    path = local_data_file(name, split)
    if path is not None:
        try:
            return datasets.load_dataset(BUILDERS[path.suffix], data_files=str(path), split="train")
        except Exception as err:  # malformed JSON lines, unreadable parquet
            raise UserError(f"could not read {path}: {str(err).splitlines()[0]}") from None
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as err:
        raise UserError(
            f"could not load Hub dataset '{name}' split '{split}': {str(err).splitlines()[0]}"
        ) from None


def _split_slice(split: str) -> tuple[str, str | None]:
    """``"train[10:20]"`` -> ``("train", "train[10:20]")``; a plain split name has no slice."""
    if "[" not in split:
        return split, None
    return split.split("[", 1)[0], split


def _slice_rows(spec: str, base: str, num_rows: int) -> list[int]:
    """Absolute row positions of a datasets slice spec over a split of ``num_rows`` rows."""
    import datasets

    try:
        instructions = datasets.ReadInstruction.from_spec(spec).to_absolute({base: num_rows})
    except (ValueError, AssertionError) as err:
        raise UserError(
            f"bad split slice {spec!r} ({err}); write it as train[100:200] or train[:10%]"
        ) from None
    return [row for ins in instructions for row in range(ins.from_, ins.to)]


def pick_column(
    columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, source: str
) -> str:
    """The column to read ``what`` (e.g. "problem") from: ``wanted`` if given (it must exist), else the first
    of ``candidates`` in ``columns``; a one-line error naming ``source`` and the ``--<what>_column`` fix."""
    if wanted is not None:
        if wanted not in columns:
            raise UserError(
                f"column '{wanted}' not in {source} (its columns: {', '.join(columns)}); fix --{what}_column"
            )
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise UserError(f"no {what} column in {source} (its columns: {', '.join(columns)}); set --{what}_column")


def load_problems(
    dataset_name: str,
    split: str = "train",
    *,
    dataset_config: str | None = None,
    problem_column: str | None = None,
    answer_column: str | None = None,
    max_problems: int | None = None,
):
    """Load problems as a `datasets.Dataset` with ``id``, ``problem`` and ``answer`` columns (see module doc)."""
    if not dataset_name:
        raise UserError("no dataset given: set dataset_name to a Hub id or a local .jsonl/.parquet path")
    split, spec = _split_slice(split)
    path = local_data_file(dataset_name, split)
    ds = read_dataset(dataset_name, split, dataset_config)
    stem = path.stem if path is not None else dataset_name.rsplit("/", 1)[-1]
    # ids count rows of the whole split, whatever part of it is read
    rows = _slice_rows(spec, split, len(ds)) if spec else None
    if max_problems is not None:
        rows = (rows if rows is not None else range(len(ds)))[:max_problems]
    if rows is not None:
        ds = ds.select(rows)

    source = dataset_name
    problem_col = pick_column(ds.column_names, problem_column, PROBLEM_COLUMNS, "problem", source)
    answer_col = pick_column(ds.column_names, answer_column, ANSWER_COLUMNS, "answer", source)
    has_id = "id" in ds.column_names

    def standardize(row, index):
        out = {"problem": str(row[problem_col]), "answer": gold_answer(row[answer_col])}
        out["id"] = str(row["id"]) if has_id else f"{stem}-{rows[index] if rows is not None else index}"
        return out

    return ds.map(standardize, with_indices=True, desc=f"reading {stem}")


def load_from_args(args: DataArguments):
    return load_problems(
        args.dataset_name,
        args.dataset_split,
        dataset_config=args.dataset_config,
        problem_column=args.problem_column,
        answer_column=args.answer_column,
        max_problems=args.max_problems,
    )
