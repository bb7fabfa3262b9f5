"""`mathforge data <kind>`: dataset makers. `toy` writes the synthetic toy task (train/test JSONL)."""

from __future__ import annotations

from mathforge.errors import UserError

KINDS = {"toy": "mathforge.data.toy"}


def main(argv: list[str] | None = None) -> None:
    import importlib

    argv = list(argv or [])
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mathforge data toy [--output_dir DIR] [--n_train N] [--n_test N] [--seed S] ...")
        print("  toy   the procedurally generated toy math task with teacher solutions")
        return
    if argv[0] not in KINDS:
        raise UserError(f"unknown dataset kind '{argv[0]}' (choose from: {', '.join(KINDS)})")
    importlib.import_module(KINDS[argv[0]]).main(argv[1:])
