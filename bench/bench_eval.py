"""Generation throughput of `mathforge eval`'s backends: our vLLM path against our transformers path.

Same prompts for both (chat prompts of toy problems), sampled with n samples each up to a fixed
number of new tokens, at two model sizes: the tiny model and the ~25M-parameter `--size small` one
(both built here, random weights). Prints problems/s and generated tokens/s per backend, the ratio,
and, for vLLM, the same engine called directly (`LLM.generate`) to show what our wrapper costs. Each
measurement runs in its own process (a fresh engine, no shared caches); model load is timed apart.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_eval.py            # 512 x 4 x 64
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_eval.py --prompts 128 --sizes tiny
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _prompts(tokenizer, count: int) -> list[str]:
    from mathforge import steps
    from mathforge.data.toy import FAMILIES, LEVELS, iter_plans

    texts = [plan.text for _, _, plan, _, _ in iter_plans(count, "test", 0, LEVELS, FAMILIES)]
    return [steps.chat_prompt(tokenizer, text, steps.SYSTEM_PROMPT) for text in texts]


def measure(
    backend: str, model: str, count: int, n: int, tokens: int, vllm_kwargs: dict | None = None
) -> dict:
    """One measurement, in this process: load, warm up, then time one batched call."""
    from mathforge.generation import SamplingConfig, load_generator

    start = time.perf_counter()
    kwargs = {"seed": 0, **(vllm_kwargs or {})} if backend == "vllm" else {}
    generator = load_generator(backend, model, **kwargs)
    load_s = time.perf_counter() - start
    prompts = _prompts(generator.tokenizer, count)
    sampling = SamplingConfig(n=n, temperature=1.0, max_new_tokens=tokens, seed=0)
    generator.generate(prompts[:4], sampling)  # warm-up: first-call allocations, lazy kernels
    start = time.perf_counter()
    outputs = generator.generate(prompts, sampling)
    seconds = time.perf_counter() - start
    result = {
        "load_s": load_s,
        "seconds": seconds,
        "tokens": sum(c.num_tokens for group in outputs for c in group),
    }
    if backend == "vllm":  # the same engine without our wrapper: what plain library calls get
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=1.0, max_tokens=tokens, seed=0, skip_special_tokens=False)
        start = time.perf_counter()
        raw = generator.llm.generate(prompts, params, use_tqdm=False)
        result["raw_seconds"] = time.perf_counter() - start
        result["raw_tokens"] = sum(len(o.token_ids) for r in raw for o in r.outputs)
    return result


def _child(args, backend: str, model: str) -> dict:
    cmd = [sys.executable, __file__, "--child", backend, model]
    cmd += ["--prompts", str(args.prompts), "--samples", str(args.samples), "--tokens", str(args.tokens)]
    cmd += ["--vllm-kwargs", args.vllm_kwargs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        raise SystemExit(f"{backend} on {model} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len("RESULT ") :])


def _parameters(model: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(model / "model.safetensors", "pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["micro", "tiny", "small"])
    parser.add_argument("--backends", nargs="+", default=["vllm", "transformers"])
    parser.add_argument("--models", default=None, help="Folder to build (or reuse) the models in.")
    parser.add_argument(
        "--vllm-kwargs",
        default="{}",
        help='JSON of VLLMGenerator options to try, e.g. \'{"enforce_eager": false, "max_num_seqs": 512}\'.',
    )
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            "RESULT " + json.dumps(measure(*args.child, args.prompts, args.samples, args.tokens)), flush=True
        )
        return

    from mathforge.tiny_model import build

    models = Path(args.models or tempfile.mkdtemp(prefix="bench-eval-"))
    print(
        f"{args.prompts} prompts x {args.samples} samples x up to {args.tokens} new tokens; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs"
        + (f"; vLLM options {args.vllm_kwargs}" if json.loads(args.vllm_kwargs) else "")
    )
    for size in args.sizes:
        path = models / size
        if not (path / "config.json").exists():
            build(path, size=size, seed=0)
        print(f"\n{size} model ({_parameters(path) / 1e6:.1f}M parameters):")
        rates = {}
        for backend in args.backends:
            r = _child(args, backend, str(path))
            rates[backend] = args.prompts / r["seconds"]
            print(
                f"  {backend:<12} {rates[backend]:7.1f} problems/s  {r['tokens'] / r['seconds']:8.0f} tokens/s"
                f"  ({r['seconds']:.1f}s for {r['tokens']} tokens; load {r['load_s']:.1f}s)"
            )
            if "raw_seconds" in r:
                print(
                    f"  {'vllm direct':<12} {args.prompts / r['raw_seconds']:7.1f} problems/s  "
                    f"{r['raw_tokens'] / r['raw_seconds']:8.0f} tokens/s  ({r['raw_seconds']:.1f}s, same engine,"
                    " no wrapper)"
                )
        if {"vllm", "transformers"} <= set(rates):
            print(f"  vllm / transformers: {rates['vllm'] / rates['transformers']:.2f}x")


if __name__ == "__main__":
    main()
