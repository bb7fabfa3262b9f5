"""A stand-in for the Hugging Face Hub, the one part of a push that cannot exist here (no network, no token).

`fake_hub(monkeypatch, tmp_path)` replaces `huggingface_hub.HfApi`, which `mathforge.push.upload` uses for
every push (`mathforge push`, the end of sft/ppm/rl training, `mathforge extract --push_to_hub`). It records
the calls and keeps a copy of each uploaded folder under `tmp_path`, so a test reads what the Hub would hold.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records what would be created and uploaded."""

    calls: list = []
    store: Path = Path()

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False):
        FakeHub.calls.append(("create_repo", repo_id, repo_type, private))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None):
        FakeHub.calls.append(("upload_folder", repo_id, repo_type, files_in(Path(folder_path))))
        shutil.copytree(folder_path, FakeHub.store / repo_id, dirs_exist_ok=True)

    @classmethod
    def uploaded(cls, repo_id: str) -> Path:
        """The copy of what was uploaded to repo_id."""
        return cls.store / repo_id


def fake_hub(monkeypatch, tmp_path: Path) -> type[FakeHub]:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    FakeHub.calls, FakeHub.store = [], tmp_path / "fake-hub"
    return FakeHub
