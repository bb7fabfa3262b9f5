"""Never-sampled tokens in the RL loss, on Qwen2.5's real tokenizer, for both generation backends.

    PYTHONPATH=src python bench/bench_token_exact.py [--model DIR] [--rollouts 200]

Runs step-format rollouts with the executor in the loop (the one step loop RL uses), encodes each as RL
does (``StepRollout.encode``) and counts the mask-1 tokens that differ from the ids the generator sampled.
Beside it, the count for the encoding RL used before: each written chunk re-tokenized from its text.
Without ``--model`` it builds the tiny model with the real tokenizer (150 steps of pretraining, ~3 min).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def retokenized_changes(trajectories, tokenizer) -> int:
    """Tokens that differ from the sampled ones when each written chunk is re-tokenized from its text."""
    changed = 0
    for t in trajectories:
        written = [i for s in t.segments if s.by_model for i in s.ids]
        old = [
            i
            for s in t.segments
            if s.by_model
            for i in tokenizer(s.text, add_special_tokens=False)["input_ids"]
        ]
        changed += sum(a != b for a, b in zip(old, written)) + abs(len(old) - len(written))
    return changed


def main() -> None:
    from mathforge import steps
    from mathforge.data.toy import write_dataset
    from mathforge.executor import Executor
    from mathforge.generation import HFGenerator, RecordingGenerator, SamplingConfig, VLLMGenerator
    from mathforge.rl import RLScriptArguments, StepRollout, never_sampled
    from mathforge.rollout import rollout
    from mathforge.tiny_model import build

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="A model folder with Qwen2.5's tokenizer.")
    parser.add_argument("--rollouts", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="token-exact-"))
    model = args.model or str(build(tmp / "model", size="tiny", tokenizer="qwen2.5", pretrain_steps=150))
    write_dataset(tmp / "data", n_train=0, n_test=args.rollouts // 2, seed=1, progress=False)
    rows = [json.loads(line) for line in (tmp / "data" / "test.jsonl").read_text().splitlines()]
    for name, backend in (("transformers", HFGenerator), ("vllm", VLLMGenerator)):
        generator = RecordingGenerator(backend(model))
        prompts = [steps.chat_prompt(generator.tokenizer, r["problem"], steps.SYSTEM_PROMPT) for r in rows]
        sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=128, seed=0)
        start = time.perf_counter()
        with Executor() as executor:
            groups = rollout(prompts, generator, executor, sampling, max_steps=6)
        trajectories = [t for g in groups for t in g]
        encoder = StepRollout(RLScriptArguments(), generator.tokenizer, max_completion_length=4096)
        now = sum(never_sampled(t, encoder.encode(t), generator.sampled) for t in trajectories)
        before = retokenized_changes(trajectories, generator.tokenizer)
        total = sum(len(s.ids) for t in trajectories for s in t.segments if s.by_model)
        print(
            f"{name:>12}: {len(trajectories)} rollouts, {total} written tokens: never-sampled tokens in the RL "
            f"loss {now} (chunks re-tokenized, as before: {before}); {time.perf_counter() - start:.0f}s"
        )


if __name__ == "__main__":
    main()
