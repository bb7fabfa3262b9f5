"""Training-step time of the demo's policy in float32 against bf16 autocast (and gradient checkpointing).

The step is what TRL's trainers run on a CPU: forward, backward and AdamW on the tiny model (random
weights: the time does not depend on them), a batch of 16 sequences x 300 tokens, with bf16 as
accelerate applies it on a CPU (``torch.autocast("cpu", torch.bfloat16)``). The variants alternate
(A B A B ...) so that load from other jobs hits each alike; the median step of each is printed, wall
time and the process's CPU time (steadier on a loaded machine with one thread), with the ratio to float32 and what `mathforge.precision` chooses for this CPU. vLLM's dtype is measured
with ``bench/bench_eval.py --sizes tiny --backends vllm --vllm-kwargs '{"dtype": "float32"}'``.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_precision.py [--steps 5 --rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

VARIANTS = {  # name -> (bf16 autocast, gradient checkpointing)
    "float32": (False, False),
    "bf16 autocast": (True, False),
    "float32 + checkpointing": (False, True),
    "bf16 autocast + checkpointing": (True, True),
}


def step_times(model_dir: Path, bf16: bool, checkpointing: bool, steps: int, batch: int, length: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, length))
    times = []
    for i in range(steps + 1):  # the first step (allocations, kernel choice) is not counted
        start, cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            times.append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per variant and round.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternations of the variants.")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=300)
    parser.add_argument("--model", default=None, help="Model folder (default: build the tiny model).")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    import torch

    from mathforge.precision import this_cpu

    model = Path(args.model) if args.model else Path(tempfile.mkdtemp(prefix="bench-precision-")) / "tiny"
    if not (model / "config.json").exists():
        from mathforge.tiny_model import build

        build(model, size="tiny", seed=0, pretrain_steps=0)
    print(
        f"{this_cpu().describe()}\n{args.batch} x {args.length} tokens a step, {args.steps} steps x "
        f"{args.rounds} rounds per variant; torch {torch.__version__}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in args.variants}
    for _ in range(args.rounds):
        for name in args.variants:
            times[name] += step_times(model, *VARIANTS[name], args.steps, args.batch, args.length)
    first = args.variants[0]
    wall_0, cpu_0 = (statistics.median(t[i] for t in times[first]) for i in (0, 1))
    for name in args.variants:
        wall, cpu = (statistics.median(t[i] for t in times[name]) for i in (0, 1))
        print(
            f"  {name:<30} {wall:6.3f} s/step wall ({wall / wall_0:.2f}x {first}), "
            f"{cpu:6.3f} s CPU ({cpu / cpu_0:.2f}x)"
        )
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
