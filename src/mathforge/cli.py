"""`mathforge` command line: one sub-command per pipeline stage, each a module with `main(argv)`.

Every stage can equally be run as `python -m mathforge.<module>` or, for trainers,
`accelerate launch -m mathforge.<module> --config recipe.yaml`.
"""

from __future__ import annotations

import importlib
import os
import sys

from mathforge.errors import UserError

# command -> (module, one-line description); modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "tiny-model": (
        "mathforge.tiny_model",
        "build a tiny Qwen2 model + tokenizer (copy-pretrained) for CPU runs and tests",
    ),
    "data": ("mathforge.data.cli", "make datasets: `data toy` writes the synthetic toy task"),
    "sft": ("mathforge.sft", "supervised fine-tuning with TRL's SFTTrainer (accelerate-launchable)"),
    "eval": ("mathforge.eval", "benchmarks (MATH-500, GSM8K...): pass@k, maj@k, token budgets, compare"),
    "search": ("mathforge.search.mcts", "MCTS data synthesis: one tree per problem, JSONL, resumable"),
    "extract": ("mathforge.search.extract", "SFT set, PPM pairs and value targets from search trees"),
    "ppm": ("mathforge.ppm", "process preference model with TRL's RewardTrainer (accelerate-launchable)"),
    "rl": ("mathforge.rl", "stage-2 GRPO/RLOO with TRL: executor-in-the-loop rollouts, reward registry"),
    "evolve": ("mathforge.evolve", "all rounds of self-evolution, then RL, resumable, with a report"),
    "push": ("mathforge.push", "publish a policy, PPM or search datasets to the Hub with cards (--dry_run)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mathforge <command> [--config recipe.yaml] [--option value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run `mathforge <command> --help` for a command's options."]
    return "\n".join(lines)


def die_with_parent() -> None:
    """Get SIGTERM when the parent process dies, even of SIGKILL (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        parent = os.getppid()
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before the call
            os.kill(os.getpid(), signal.SIGTERM)


def run_main(main, argv: list[str] | None, prog: str) -> int:
    """Run a stage's `main`, turning a UserError into one line on stderr and exit code 2."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        # A rank started by `accelerate launch` / torchrun: the launcher puts it in a session of its own, so a
        # kill of the launcher's process group (`mathforge evolve` killed) would leave it training alone.
        die_with_parent()
    try:
        main(argv)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from mathforge import __version__

        print(f"mathforge {__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(
            f"mathforge: error: unknown command '{command}' (choose from: {', '.join(COMMANDS)})",
            file=sys.stderr,
        )
        return 2
    name = COMMANDS[command][0]
    if command == "rl" and importlib.import_module("mathforge.verl.launcher").wants_verl(argv[1:]):
        name = "mathforge.verl.launcher"  # `--backend verl` (or `backend: verl` in the recipe)
    module = importlib.import_module(name)
    return run_main(module.main, argv[1:], f"mathforge {command}")


if __name__ == "__main__":
    sys.exit(main())
