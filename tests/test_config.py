import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from mathforge.config import parse_config
from mathforge.errors import UserError


@dataclass
class Options:
    output_dir: str = field(default="out", metadata={"help": "where"})
    steps: int = 3
    verbose: bool = False


def test_yaml_then_cli_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: 7\noutput_dir: y\n")
    (opts,) = parse_config([Options], ["--config", str(recipe), "--steps", "9", "--verbose", "true"])
    assert (opts.output_dir, opts.steps, opts.verbose) == ("y", 9, True)


@pytest.mark.parametrize(
    "content, argv, message",
    [
        ("stpes: 7\n", [], "unknown key 'stpes'"),
        ("steps: [7\n", [], "malformed YAML"),
        ("- 1\n- 2\n", [], "must be a YAML mapping"),
        (None, ["--bogus", "1"], "unknown option --bogus"),
        (None, ["--steps", "many"], "invalid int value"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, content, argv, message):
    if content is not None:
        (tmp_path / "r.yaml").write_text(content)
        argv = ["--config", str(tmp_path / "r.yaml"), *argv]
    with pytest.raises(UserError, match=message) as err:
        parse_config([Options], argv)
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        parse_config([Options], ["--config", str(tmp_path / "nope.yaml")])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mathforge.cli", *args], capture_output=True, text=True)


def test_cli_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("tiny-model", "data", "sft"):
        assert command in out.stdout


def test_cli_errors_are_one_line_with_nonzero_exit(tmp_path):
    out = run_cli("frobnicate")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "unknown command" in out.stderr
    out = run_cli("sft", "--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "config file not found" in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0


def test_one_rule_says_local_path_or_hub_id(tmp_path, monkeypatch):
    from mathforge.config import DATA_FILE_SUFFIXES, is_local, resolve
    from mathforge.data.loading import BUILDERS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "gsm8k").mkdir()  # a folder named like a Hub id is what is read
    (tmp_path / "owner" / "model").mkdir(parents=True)
    hub = ["Qwen/Qwen2.5-Math-1.5B", "openai/gsm8k", "gpt2", "runs/sft"]
    local = ["./sft", "/abs/model", "~/models/x", "runs/tiny/sft", "pairs.jsonl", "gsm8k", "owner/model"]
    assert [is_local(n) for n in hub] == [False] * len(hub)
    assert [is_local(n) for n in local] == [True] * len(local)
    assert tuple(BUILDERS) == DATA_FILE_SUFFIXES  # every suffix the rule calls local can be read
    # ~ is expanded, a Hub id passes through unchanged
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve("~/owner/model") == str(tmp_path / "owner" / "model")
    assert resolve("Qwen/Qwen2.5-Math-1.5B", "model folder") == "Qwen/Qwen2.5-Math-1.5B"
    # a local path that does not exist is an error only when the caller names what it is for
    assert resolve("runs/tiny/none") == "runs/tiny/none"
    with pytest.raises(UserError, match="model folder not found: ~/none"):
        resolve("~/none", "model folder")


def test_saved_recipe_never_holds_a_token():
    from mathforge.config import to_dict

    @dataclass
    class Hub:
        hub_token: str | None = None
        eos_token: str | None = "<|im_end|>"

    assert to_dict(Hub(hub_token="hf_secret")) == {"hub_token": "<HUB_TOKEN>", "eos_token": "<|im_end|>"}
    assert to_dict(Hub()) == {"hub_token": None, "eos_token": "<|im_end|>"}


def test_write_atomic_replaces_whole_files_and_leaves_nothing_on_failure(tmp_path):
    import os
    import stat

    import pytest

    from mathforge.config import atomic_path, write_atomic

    path = tmp_path / "results.json"
    write_atomic(path, "first\n")
    write_atomic(path, b"second\n")
    assert path.read_text() == "second\n" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # an ordinary file, not a private temp file
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "second\n" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
