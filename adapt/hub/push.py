"""Push a run folder to the Hugging Face Hub through `huggingface_hub`, as one commit."""

from __future__ import annotations

from pathlib import Path

# Training leftovers that do not belong in a published model repository.
IGNORE = ["checkpoint-*", "checkpoint-*/**", "*.pt", "*.pth", "rng_state*"]


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision, ignore_patterns=IGNORE,
                             commit_message=f"adapt: upload {Path(folder).name}")
    return info.commit_url
