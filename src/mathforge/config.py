"""Config parsing for every stage, the open-r1/TRL way.

Each command is a set of dataclasses (its own options, and for trainers TRL's `SFTConfig`,
`ModelConfig`, ...). `--config recipe.yaml` sets their values, any key can be overridden on the
command line (`--learning_rate 1e-5`), and bad input becomes a one-line :class:`UserError`:
a missing or malformed YAML file, an unknown key (named), an unknown option, a bad value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from mathforge.errors import UserError


def _make_parser(dataclass_types, prog):
    """TRL's TrlParser, whose argparse errors raise instead of printing usage and exiting."""
    from trl import (
        TrlParser,  # imported here: trl is slow to import and `--help` of other commands needs none
    )

    class Parser(TrlParser):
        def error(self, message):  # argparse's default prints usage and calls sys.exit(2)
            raise UserError(f"{message} (run with --help for the valid options)")

    return Parser(dataclass_types=dataclass_types, prog=prog)


def check_keys(keys, dataclass_types, where: str) -> None:
    """Raise a one-line UserError for the first of `keys` that is no field of `dataclass_types` (nor `env`).

    The message is "unknown key 'K' <where>" and names the closest valid key when there is one."""
    known = {f.name for t in dataclass_types for f in dataclasses.fields(t)} | {"env"}
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; see --help for the valid keys"
            raise UserError(f"unknown key '{key}' {where}{hint}")


# Suffixes of the data files a dataset name can point to.
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def is_local(name: str) -> bool:
    """Whether a model or dataset name is a local path rather than a Hugging Face Hub id.

    A Hub id is ``name`` or ``owner/name``. A name is local when it exists on disk (``~`` expanded), starts
    with ``.``, ``/`` or ``~``, has more than one ``/`` (``runs/tiny/sft``), or ends in a data file suffix
    (.jsonl, .json, .parquet). So ``Qwen/Qwen2.5-Math-1.5B`` and ``gsm8k`` are Hub ids unless a folder of
    that name exists here, and ``runs/sft``, shaped like ``owner/name``, is local once it exists (write
    ``./runs/sft`` to mean the folder before it does).
    """
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or name.endswith(DATA_FILE_SUFFIXES)
        or os.path.exists(os.path.expanduser(name))
    )


def resolve(name: str, what: str | None = None) -> str:
    """The name to load: a local path (see :func:`is_local`) with ``~`` expanded, or the Hub id unchanged.

    what: what the name is for the error message (e.g. "model folder"); when given, a local path that does
    not exist is a :class:`UserError` ``"<what> not found: <name>"``. Default None: no check.
    """
    if not is_local(name):
        return name
    path = os.path.expanduser(name)
    if what is not None and not os.path.exists(path):
        raise UserError(f"{what} not found: {name} (a local path, or a Hub id owner/name)")
    return path


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a recipe YAML into a dict, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path} (pass an existing YAML recipe to --config)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise UserError(f"malformed YAML in {path}{at}: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a YAML mapping of option: value, not a {type(data).__name__}")
    return data


def parse_config(
    dataclass_types: list[type], argv: list[str] | None = None, prog: str | None = None
) -> tuple:
    """Parse `--config file.yaml` plus command-line overrides into instances of `dataclass_types`.

    Keys in the YAML must be fields of one of the dataclasses (an `env:` mapping sets environment
    variables, as in TRL). Returns one instance per dataclass type, in order.
    """
    argv = list(argv) if argv is not None else None
    if argv is not None and "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UserError("--config needs a path to a YAML recipe")
        # Validate the file and its keys here so the message names the offending key.
        check_keys(load_yaml(argv[i + 1]), dataclass_types, f"in {argv[i + 1]}")
    parser = _make_parser(dataclass_types, prog)
    try:
        return tuple(parser.parse_args_and_config(argv))
    except UserError:
        raise
    except (ValueError, TypeError) as err:  # HfArgumentParser's leftovers, and __post_init__ checks
        message = str(err).strip().splitlines()[0]
        if "not used by the HfArgumentParser" in message:
            unknown = [
                a for a in message.split("[", 1)[1].strip("]").split(", ") if a.strip("'").startswith("-")
            ]
            message = f"unknown option {', '.join(u.strip(chr(39)) for u in unknown)} (run with --help for the valid options)"
        raise UserError(message) from None


# Options that hold secrets: saved recipes (which `mathforge push` publishes) name them, never their value.
SECRET_KEYS = ("hub_token",)


def to_dict(*configs) -> dict[str, Any]:
    """The resolved options of one or more config dataclasses, as a YAML-safe dict (for saving the recipe used);
    a secret (SECRET_KEYS) that is set is written as ``<HUB_TOKEN>``, as transformers does."""
    out: dict[str, Any] = {}
    for config in configs:
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if f.name in SECRET_KEYS and value is not None:
                value = f"<{f.name.upper()}>"
            if isinstance(value, enum.Enum):  # TRL/transformers options such as lr_scheduler_type
                value = value.value
            if isinstance(value, (str, int, float, bool, type(None), list, dict)):
                out[f.name] = value
            else:
                out[f.name] = str(value)
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends, removed if it
    raises. A reader (or a resumed run) never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def save_yaml(data: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `data` as YAML atomically."""
    write_atomic(path, yaml.safe_dump(data, sort_keys=False))


__all__ = [
    "parse_config",
    "check_keys",
    "load_yaml",
    "to_dict",
    "save_yaml",
    "write_atomic",
    "atomic_path",
    "UserError",
]
