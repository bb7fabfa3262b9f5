"""mathforge.precision: bf16 only where the CPU has bf16 instructions, from /proc/cpuinfo's flags."""

from __future__ import annotations

from mathforge.precision import choose, cpu_flags, this_cpu

AVX2 = {"sse4_2", "avx", "avx2", "fma"}


def test_a_cpu_without_bf16_instructions_computes_in_float32():
    p = choose(AVX2)
    assert (p.bf16_flag, p.train_bf16, p.vllm_dtype, p.torch_dtype) == (None, False, "float32", "float32")
    assert "no bf16 instructions" in p.describe()


def test_avx512_bf16_alone_runs_vllm_in_bf16_and_trains_in_float32():
    p = choose(AVX2 | {"avx512f", "avx512_bf16"})
    assert (p.bf16_flag, p.train_bf16, p.vllm_dtype, p.torch_dtype) == (
        "avx512_bf16",
        False,
        "bfloat16",
        "float32",
    )


def test_amx_computes_everything_in_bf16():
    p = choose(AVX2 | {"avx512_bf16", "amx_bf16", "amx_tile"})
    assert (p.bf16_flag, p.train_bf16, p.vllm_dtype, p.torch_dtype) == (
        "amx_bf16",
        True,
        "bfloat16",
        "bfloat16",
    )
    assert p.describe() == "CPU flag amx_bf16: training bf16 autocast, vLLM bfloat16, transformers bfloat16"


def test_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512_bf16\n"
    )
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()  # not Linux: no flags, float32 everywhere
    assert choose(cpu_flags(tmp_path / "missing")).train_bf16 is False


def test_this_machine_is_read_once_and_matches_its_flags():
    assert this_cpu() is this_cpu()
    assert this_cpu() == choose(cpu_flags())
