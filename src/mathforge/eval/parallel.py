"""Data parallelism for `mathforge eval`: N copies of the command, each on its own problems and GPUs.

Copy i runs ``python -m mathforge.evaluate`` on problems i, i+N, i+2N, ... (interleaved, so every copy
gets a similar mix of easy and hard ones) with ``CUDA_VISIBLE_DEVICES`` set to its own
``tensor_parallel_size`` GPUs, and writes ``<output_dir>/shards/<i>/``; the samples are then merged in
problem order. One copy per node works the same way by hand with ``--num_shards``/``--shard_index``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mathforge.config import save_yaml, to_dict
from mathforge.errors import UserError
from mathforge.eval.report import load_results
from mathforge.eval.scoring import read_jsonl


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
        argv = [sys.executable, "-m", "mathforge.evaluate", "--config", str(shards_dir / "config.yaml")]
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
    samples, info = [], {}
    for i in range(config.data_parallel_size):
        samples += read_jsonl(shards_dir / str(i) / "samples.jsonl")
        shard = load_results(shards_dir / str(i))
        for name, r in shard["benchmarks"].items():
            title, seconds = info.get(name, (r["title"], 0.0))
            info[name] = (title, max(seconds, r["seconds"]))  # shards run side by side
    order = {name: k for k, name in enumerate(info)}
    samples.sort(key=lambda s: (order[s["benchmark"]], s["index"], s["sample"]))
    return samples, info
