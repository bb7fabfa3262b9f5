"""Our RL problems -> verl's RL parquet (what `verl.utils.dataset.RLHFDataset` reads).

One row per problem::

    data_source   "mathforge/<dataset name>"      (verl's reward_fn_key; our reward ignores it)
    prompt        [{"role": "system", ...}, {"role": "user", "content": problem}]   (chat messages)
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": gold answer}
    extra_info    {"id", "problem", "answer", "system_prompt", "index"}
    agent_name    "mathforge_steps" (our agent loop; verl's single-turn loop otherwise)

The messages are those `mathforge rl` builds (the same system prompt, or none, as SFT trained with); verl
renders them with the policy's chat template, as TRL does. Written with pyarrow, to a temporary file then
renamed, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import os
from pathlib import Path

from mathforge.config import atomic_path, is_local
from mathforge.errors import UserError
from mathforge.verl.agent_loop import AGENT_NAME


def rows_from_problems(problems, source: str, system_prompt: str | None, agent_name: str | None = AGENT_NAME):
    """verl rows from ``problems`` (dicts or a `datasets.Dataset` with ``id``, ``problem``, ``answer``)."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    rows = []
    for index, problem in enumerate(problems):
        row = {
            "data_source": f"mathforge/{source}",
            "prompt": system + [{"role": "user", "content": str(problem["problem"])}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(problem["answer"])},
            "extra_info": {
                "id": str(problem["id"]),
                "problem": str(problem["problem"]),
                "answer": str(problem["answer"]),
                "system_prompt": system_prompt or "",
                "index": index,
            },
        }
        if agent_name:
            row["agent_name"] = agent_name
        rows.append(row)
    return rows


def write_parquet(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write verl rows to ``path`` atomically (temp file + rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise UserError(f"no problems to export to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    return path


def export(
    dataset_name: str,
    output: str | os.PathLike,
    *,
    split: str = "train",
    dataset_config: str | None = None,
    problem_column: str | None = None,
    answer_column: str | None = None,
    max_problems: int | None = None,
    system_prompt: str | None = None,
    agent_name: str | None = AGENT_NAME,
) -> Path:
    """Load problems with :func:`mathforge.data.loading.load_problems` and write them as verl's parquet."""
    from mathforge.data.loading import load_problems

    problems = load_problems(
        dataset_name,
        split,
        dataset_config=dataset_config,
        problem_column=problem_column,
        answer_column=answer_column,
        max_problems=max_problems,
    )
    source = Path(dataset_name).stem if is_local(dataset_name) else dataset_name
    return write_parquet(rows_from_problems(problems, source, system_prompt, agent_name), output)


def read_parquet(path: str | os.PathLike) -> list[dict]:
    """The rows of a verl parquet file, as dicts (for checks and tests)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


__all__ = ["export", "read_parquet", "rows_from_problems", "write_parquet"]
