"""Whether a training run moved the weights: the check TRL's own trainer tests make (every trained tensor
differs from its value before training), read from the model files a run starts from and saves."""

from __future__ import annotations

from pathlib import Path


def weights_moved(before: Path, after: Path) -> dict[str, bool]:
    """For each tensor of ``before/model.safetensors`` (the model a run started from): whether
    ``after/model.safetensors`` (the model it saved) holds a different value. Tensors only ``after`` has
    (a PPM's new score head) are not compared; one only ``before`` has is an error."""
    import torch
    from safetensors.torch import load_file

    start, end = load_file(Path(before) / "model.safetensors"), load_file(Path(after) / "model.safetensors")
    lost = sorted(set(start) - set(end))
    assert not lost, f"{after} lacks tensors of {before}: {lost[:5]}"
    return {name: not torch.equal(tensor, end[name]) for name, tensor in start.items()}
