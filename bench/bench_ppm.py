"""PPM scoring throughput: vLLM's pooling runner (`ppm_backend: vllm`) against the transformers scorer.

The texts are what search asks the PPM to score: a toy problem's chat prompt followed by a prefix of its
step-format teacher solution (cut after 1, 2, ... steps, so lengths vary as in a tree). Both scorers get
the same texts in one call; each is warmed up first and its load is timed apart. The PPMs are the
tiny and ~25M-parameter `small` models with a random 1-label head (throughput does not depend on the
weights), saved as `Qwen2ForSequenceClassification`, the architecture `mathforge ppm` writes. Prints
texts/s and tokens/s of each, the ratio, and the largest difference between their raw scores.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_ppm.py [--texts 512] [--sizes tiny small]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def build_ppm(models: Path, size: str) -> Path:
    """A `size` tiny-model PPM (random head) in ``models/<size>-ppm``, built once."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from mathforge.tiny_model import build

    policy, ppm = models / size, models / f"{size}-ppm"
    if not (ppm / "config.json").exists():
        if not (policy / "config.json").exists():
            build(policy, size=size, seed=0)
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(policy)
        model = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(ppm)
        tokenizer.save_pretrained(ppm)
    return ppm


def search_texts(tokenizer, count: int) -> list[str]:
    """Prompt + the first k steps of a teacher solution, k = 1, 2, ..., over toy problems."""
    from mathforge import steps
    from mathforge.data.toy import generate_problems

    texts = []
    for row in generate_problems(max(8, count // 4), split="test", seed=0):
        prompt = steps.chat_prompt(tokenizer, row["problem"], steps.SYSTEM_PROMPT)
        solution = steps.parse_completion(row["solution"])
        for k in range(1, len(solution.steps) + 1):
            texts.append(prompt + steps.render_solution(solution.steps[:k]))
        texts.append(prompt + row["solution"])
    return (texts * (count // max(1, len(texts)) + 1))[:count]


def measure(scorer, texts: list[str]) -> tuple[float, list[float]]:
    scorer.raw(texts[:8])  # warm-up
    start = time.perf_counter()
    raw = scorer.raw(texts)
    return time.perf_counter() - start, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["micro", "tiny", "small"])
    parser.add_argument("--batch_size", type=int, default=32, help="transformers scorer batch (its default)")
    parser.add_argument("--models", default=None, help="Folder to build (or reuse) the models in.")
    args = parser.parse_args()

    from mathforge.ppm import VLLMPPMScorer, load_scorer

    models = Path(args.models or tempfile.mkdtemp(prefix="bench-ppm-"))
    print(
        f"{args.texts} search prefixes; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"{os.cpu_count()} CPUs"
    )
    for size in args.sizes:
        path = str(build_ppm(models, size))
        start = time.perf_counter()
        hf = load_scorer(path, batch_size=args.batch_size)
        hf_load = time.perf_counter() - start
        texts = search_texts(hf.tokenizer, args.texts)
        tokens = sum(len(ids) for ids in hf.tokenizer(texts)["input_ids"])
        start = time.perf_counter()
        vllm = VLLMPPMScorer(path, dtype="float32")
        vllm_load = time.perf_counter() - start
        params = sum(p.numel() for p in hf.model.parameters())
        print(f"\n{size} PPM ({params / 1e6:.1f}M parameters), {tokens / len(texts):.0f} tokens per text:")
        seconds, raws = {}, {}
        for name, scorer, load in (("transformers", hf, hf_load), ("vllm", vllm, vllm_load)):
            seconds[name], raws[name] = measure(scorer, texts)
            print(
                f"  {name:<12} {len(texts) / seconds[name]:8.1f} texts/s  {tokens / seconds[name]:9.0f} tokens/s"
                f"  ({seconds[name]:.2f}s; load {load:.1f}s)"
            )
        diff = max(abs(a - b) for a, b in zip(raws["transformers"], raws["vllm"]))
        print(
            f"  vllm / transformers: {seconds['transformers'] / seconds['vllm']:.2f}x; max |raw diff| {diff:.2e}"
        )
        del vllm


if __name__ == "__main__":
    main()
