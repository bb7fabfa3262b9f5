"""Evaluation: `mathforge eval` (or ``python -m mathforge.eval``, ``accelerate launch -m mathforge.eval``).

* :mod:`.run`: the command: its options (:class:`EvalConfig`), prompting, solving, :func:`evaluate`, ``main``.
* :mod:`.benchmarks`: the benchmark registry (Hub ids, local file names, columns).
* :mod:`.scoring`: ``--answer_extraction`` policies, and grading completions made elsewhere (``--predictions``).
* :mod:`.metrics`: pass@k, maj@k, coverage, accuracy at token budgets (pure functions).
* :mod:`.report`: ``results.md``, the plots, and ``mathforge eval compare``.
* :mod:`.parallel`: data-parallel copies (``--data_parallel_size``, or one per ``accelerate launch`` process).
"""

from mathforge.eval.run import EvalConfig, config_types, evaluate, main

__all__ = ["EvalConfig", "config_types", "evaluate", "main"]
