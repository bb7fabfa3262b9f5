"""Compose verl's ``ppo_trainer`` config with Hydra overrides, run by the Python of the config environment
(``make venv-verl-config``: hydra-core, omegaconf and ``verl==0.9.1 --no-deps``).

Hydra pins antlr4-python3-runtime 4.9, while math-verify's LaTeX parser needs 4.13: Hydra never goes into the
main environment, where the grader judges every reward, so the launcher runs this file there by path, in a
subprocess. It imports nothing of mathforge (mathforge is not installed in that environment).

stdin: ``{"overrides": [...], "verl_version": "0.9.1"}`` (JSON). stdout: one JSON object,
``{"config": {...}}`` (the composed config, interpolations resolved as ``main_ppo`` resolves them) or
``{"error": "..."}`` (the first line of Hydra's or OmegaConf's message, or what is missing). Exit status 0
either way: a rejected override is an answer, not a crash.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


def config_dir(version: str) -> Path:
    """verl's ``trainer/config`` folder, found without importing verl (which needs ray and torch)."""
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(f"verl is not installed in {sys.prefix}: pip install --no-deps verl=={version}")
    root = Path(list(spec.submodule_search_locations)[0])
    found = (
        (root / "version" / "version").read_text().strip()
        if (root / "version" / "version").is_file()
        else "?"
    )
    if found != version:
        raise LookupError(
            f"verl {found} is installed in {sys.prefix}, not {version}: pip install verl=={version}"
        )
    return root / "trainer" / "config"


def compose(overrides: list[str], version: str):
    """The composed config as ``main_ppo`` composes it (a DictConfig); raises Hydra's or OmegaConf's error."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir(version)), version_base=None):
        return hydra_compose("ppo_trainer", overrides=overrides)


def main() -> int:
    request = json.load(sys.stdin)
    version = request.get("verl_version", "0.9.1")
    try:
        from hydra.errors import HydraException
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException
    except ImportError:
        print(
            json.dumps({"error": f"hydra-core is not installed in {sys.prefix}: run `make venv-verl-config`"})
        )
        return 0
    try:
        config = compose(list(request["overrides"]), version)
        answer = {"config": OmegaConf.to_container(config, resolve=True)}
    except (HydraException, OmegaConfBaseException) as err:
        answer = {"error": f"verl {version} rejects the overrides: {str(err).splitlines()[0]}"}
    except LookupError as err:
        answer = {"error": str(err)}
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
