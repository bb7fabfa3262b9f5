"""Data parallelism for `mathforge eval`: N copies of the command, each on its own problems and GPUs.

Copy i runs ``python -m mathforge.eval`` on problems i, i+N, i+2N, ... (interleaved, so every copy
gets a similar mix of easy and hard ones) with ``CUDA_VISIBLE_DEVICES`` set to its own
``tensor_parallel_size`` GPUs, and writes ``<output_dir>/shards/<i>/``; the samples are then merged in
problem order. One copy per node works the same way by hand with ``--num_shards``/``--shard_index``.

Under ``accelerate launch`` (one node or several) each process is one copy instead: it reads its global
rank and the world size from the launcher (:func:`mathforge.cluster.launched_shard`), takes its own GPUs,
writes ``<output_dir>/shards/<rank>/`` (:func:`launched_part`), and the last copy to finish merges
(:func:`merge_if_complete`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mathforge.config import save_yaml, to_dict
from mathforge.errors import UserError
from mathforge.eval.report import load_results, load_samples


def run_data_parallel(config, data) -> tuple[list[dict], dict]:
    """Run ``data_parallel_size`` copies of this command on disjoint problem slices, then merge them."""
    import torch

    out = Path(config.output_dir or "")
    if not config.output_dir:
        raise UserError("data_parallel_size > 1 needs output_dir (the shards write there)")
    shards_dir = out / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    recipe = to_dict(config, data)
    recipe.update(data_parallel_size=1, num_shards=config.data_parallel_size, progress=False)
    save_yaml(recipe, shards_dir / "config.yaml")
    dp, tp = config.data_parallel_size, config.tensor_parallel_size
    gpu_ids = []
    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpu_ids = visible.split(",") if visible else [str(g) for g in range(torch.cuda.device_count())]
        if len(gpu_ids) < dp * tp:
            raise UserError(
                f"data_parallel_size {dp} x tensor_parallel_size {tp} needs {dp * tp} GPUs; {len(gpu_ids)} visible"
            )
    procs = []
    for i in range(dp):
        env = dict(os.environ)
        if gpu_ids:  # each copy sees its own tensor_parallel_size GPUs
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids[i * tp : (i + 1) * tp])
        argv = [sys.executable, "-m", "mathforge.eval", "--config", str(shards_dir / "config.yaml")]
        argv += ["--shard_index", str(i), "--output_dir", str(shards_dir / str(i))]
        log = open(shards_dir / f"{i}.log", "w")
        procs.append((i, subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for i, proc, log in procs:
        if proc.wait() != 0:
            failed.append(i)
        log.close()
    if failed:
        raise UserError(f"data-parallel shard(s) {failed} failed; see {shards_dir}/<shard>.log")
    return merge_shards(shards_dir, config.data_parallel_size)


def launched_part(config, shard):
    """This process's share under ``accelerate launch`` (any number of nodes): ``config`` for the problems i
    with i mod world_size == global rank, written to ``<output_dir>/shards/<rank>/``. Takes this copy's own
    GPUs, so it must run before anything touches CUDA. ``output_dir`` must be on a file system all nodes
    share."""
    from dataclasses import replace

    from mathforge.cluster import start_shard

    if not config.output_dir:
        raise UserError("a launched evaluation (several processes) needs output_dir (the shards write there)")
    if config.data_parallel_size > 1:
        raise UserError("use either accelerate launch or data_parallel_size > 1, not both")
    start_shard(gpus_per_copy=config.tensor_parallel_size)
    return replace(
        config,
        num_shards=shard.world_size,
        shard_index=shard.rank,
        output_dir=str(Path(config.output_dir) / "shards" / str(shard.rank)),
        progress=config.progress and shard.rank == 0,
    )


def merge_if_complete(output_dir, count: int) -> tuple[list[dict], dict] | None:
    """The merged shards of a launched evaluation when all ``count`` are written (this copy finished
    last), else None (another copy will merge)."""
    shards_dir = Path(output_dir) / "shards"
    if not all((shards_dir / str(i) / "results.json").is_file() for i in range(count)):
        return None
    return merge_shards(shards_dir, count)


def merge_shards(shards_dir: Path, count: int) -> tuple[list[dict], dict]:
    """The samples of shards 0..count-1, in problem order, and {benchmark: (title, seconds)}."""
    samples, info = [], {}
    for i in range(count):
        samples += load_samples(shards_dir / str(i))  # none when there were fewer problems than copies
        shard = load_results(shards_dir / str(i))
        for name, r in shard["benchmarks"].items():
            title, seconds = info.get(name, (r["title"], 0.0))
            info[name] = (title, max(seconds, r["seconds"]))  # shards run side by side
    order = {name: k for k, name in enumerate(info)}
    samples.sort(key=lambda s: (order[s["benchmark"]], s["index"], s["sample"]))
    return samples, info
