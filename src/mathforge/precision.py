"""Which precision a CPU computes fastest in: bf16 only where the CPU has bf16 instructions.

On a CPU without them (AVX2 only) PyTorch and vLLM emulate bf16 with conversions and it is far slower
than float32 (a training step of the demo's policy 13x, vLLM generation 2.7x). With ``avx512_bf16`` or
AMX (``amx_bf16``) vLLM runs faster in bf16; trainers use bf16 autocast only with AMX: with
``avx512_bf16`` alone a raw step was 0.74x the CPU time but a TRL step showed no wall-clock gain, and
the one demo bootstrap trained under it scored 34% greedy against ~46% in float32 (figures:
``bench/bench_precision.py`` and docs/experiments.md). :func:`choose` reads the flags once and answers for training and generation, so
that `mathforge evolve` (``precision: auto``) and the tests compute in what the machine runs fast.
On a GPU nothing here applies: its recipes set ``bf16``/``dtype`` themselves.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic, fastest first


@dataclass(frozen=True)
class Precision:
    """What each kind of stage computes in on this CPU.

    Fields:
        bf16_flag: the best native bf16 flag of the CPU (``amx_bf16``, ``avx512_bf16``) or None.
        train_bf16: whether trainers (TRL's ``bf16``) run under bf16 autocast; True only with AMX.
        vllm_dtype: dtype of a vLLM engine on this CPU: ``bfloat16`` with either flag, else ``float32``.
        torch_dtype: dtype of a transformers generator on this CPU: ``bfloat16`` with AMX, else
            ``float32`` (whole-model bf16 weights, unlike autocast, were not measured faster without AMX).
    """

    bf16_flag: str | None
    train_bf16: bool
    vllm_dtype: str
    torch_dtype: str

    def describe(self) -> str:
        """One line for logs and reports, e.g. "CPU flag avx512_bf16: training float32, vLLM bfloat16"."""
        flag = f"CPU flag {self.bf16_flag}" if self.bf16_flag else "no bf16 instructions on this CPU (AVX2)"
        training = "bf16 autocast" if self.train_bf16 else "float32"
        return f"{flag}: training {training}, vLLM {self.vllm_dtype}, transformers {self.torch_dtype}"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The feature flags of the first CPU in ``cpuinfo`` (empty when the file is missing: not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86 / ARM
            return set(line.split(":", 1)[1].split())
    return set()


def choose(flags: set[str] | None = None) -> Precision:
    """The precision of each kind of stage for a CPU with these flags (default: this machine's)."""
    flags = cpu_flags() if flags is None else flags
    flag = next((f for f in BF16_FLAGS if f in flags), None)
    amx = flag == "amx_bf16"
    return Precision(
        bf16_flag=flag,
        train_bf16=amx,
        vllm_dtype="bfloat16" if flag else "float32",
        torch_dtype="bfloat16" if amx else "float32",
    )


@functools.cache
def this_cpu() -> Precision:
    """:func:`choose` for this machine's CPU (read once per process)."""
    return choose()


__all__ = ["BF16_FLAGS", "Precision", "choose", "cpu_flags", "this_cpu"]
