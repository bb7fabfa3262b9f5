"""Check, without a GPU, what `pip install ".[vllm]"` resolves to on a Linux x86-64 GPU machine.

Runs ``pip install --dry-run --report`` against PyPI only (``--isolated``: no local wheel folders or
constraint files of this machine), for this repository with its ``vllm`` and ``dev`` extras and
``torch==2.13.0``, as ``scripts/install.sh`` installs on a machine with ``nvidia-smi``, and compares the
resolved versions with the documented set (docs/cluster.md):

* vllm 0.31.0: the newest in TRL 1.16's supported range (0.22.0 - 0.31.0; outside it TRL warns on import);
* torch 2.13.0, which vllm 0.31.0 pins; PyPI's Linux wheel is a CUDA 13 build (its ``nvidia-*`` packages
  are listed), so the machine needs an NVIDIA driver that supports CUDA 13 (Linux: 580.65.06 or newer);
* transformers >= 5.16.1 and < 5.18 (ours: >= 5.16.1; vllm 0.31.0: >= 5.10.4, < 5.18);
* trl 1.16.x.

DeepSpeed is left out: install.sh builds it without build isolation against the installed torch, which a
dry run cannot do. Needs network access to PyPI (about a minute: metadata only, nothing is installed).

    python scripts/check_gpu_install.py [--report resolved.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DOCUMENTED = {
    "vllm": SpecifierSet("==0.31.0"),
    "torch": SpecifierSet("==2.13.0"),
    "transformers": SpecifierSet(">=5.16.1,<5.18"),
    "trl": SpecifierSet(">=1.16,<1.17"),
}
TRL_VLLM_RANGE = SpecifierSet(">=0.22.0,<=0.31.0")  # trl/import_utils.py of TRL 1.16


def resolve(report: Path) -> dict[str, str]:
    """Package name -> version pip would install, from its JSON report."""
    cmd = [
        sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--index-url", "https://pypi.org/simple", "--only-binary", "torch,vllm",
        "--report", str(report), f"{REPO}[vllm,dev]", "torch==2.13.0",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"pip could not resolve the GPU install: {run.stderr.strip().splitlines()[-1:]}")
    items = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in items}


def check(resolved: dict[str, str]) -> list[str]:
    """One line per problem with the resolved set; empty when it is the documented one."""
    problems = []
    for name, spec in DOCUMENTED.items():
        version = resolved.get(name)
        if version is None:
            problems.append(f"{name} is not in the resolved set")
        elif Version(version) not in spec:
            problems.append(f"{name} {version} is not {spec}")
    vllm = resolved.get("vllm")
    if vllm and Version(Version(vllm).base_version) not in TRL_VLLM_RANGE:
        problems.append(f"vllm {vllm} is outside TRL's supported range {TRL_VLLM_RANGE}")
    if not any(name.startswith("nvidia-") and "cu13" in name for name in resolved) and not any(
        name.startswith("nvidia-cuda-runtime") and resolved[name].startswith("13.") for name in resolved
    ):
        problems.append(
            "torch's CUDA packages are not CUDA 13 ones: the documented driver requirement is wrong"
        )
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", help="Also keep pip's JSON report here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(args.report or Path(tmp) / "report.json")
        resolved = resolve(report)
    cuda = sorted(f"{n}=={v}" for n, v in resolved.items() if n.startswith("nvidia-cuda-runtime"))
    shown = ", ".join(f"{n} {resolved.get(n, '-')}" for n in (*DOCUMENTED, "accelerate", "deepspeed", "peft"))
    print(f"GPU install resolves to: {shown}; CUDA runtime: {', '.join(cuda) or 'none'}")
    problems = check(resolved)
    for line in problems:
        print(f"MISMATCH: {line}")
    if problems:
        sys.exit(1)
    print("OK: the documented set")


if __name__ == "__main__":
    main()
