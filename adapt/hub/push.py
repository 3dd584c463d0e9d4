"""Push a run folder to the Hugging Face Hub through `huggingface_hub`, as ONE commit, and the `adapt push` command.

One commit is what makes a push atomic: the Hub applies a commit whole or not at all, so a failed push never leaves
a half-written revision. `create_commit` gives that even for large folders (files go to LFS/Xet storage first, then
one commit references them all); `upload_large_folder` would not (it commits in batches), so it is not used.
Every file of the folder and every deletion of a file the folder no longer has is in that commit, made on top of
the revision that was checked (`parent_commit`): if anything landed in between, the Hub refuses it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from adapt.hub.folder import WHATS, Folder, FolderOptions, PublishError, build_folder

RETRIES = 5
RETRY_BASE_S = 1.0  # waits 1, 2, 4, 8, 16 s
# No retry starts after this many seconds of trying. huggingface_hub retries each request itself (5 times, up to 23 s),
# so six attempts of a push whose every upload failed took 313 s before this said so.
RETRY_BUDGET_S = 60.0
TRANSIENT_STATUS = {429, 500, 502, 503, 504}
KEEP_REMOTE = {".gitattributes"}  # the Hub's own file: which paths are LFS; never deleted
AUTH_FIX = "set HF_TOKEN to a token with write access, or run `hf auth login`"


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit_url: str
    files: list[str]
    fingerprint: str
    remote_was: str  # new | new branch | same (this model again) | replaced (a different model, with --force)
    changed: bool  # False: the revision already held exactly this folder, and no commit was made


def dry_run(run_dir: str | Path, out: str | Path, repo_id: str, options: FolderOptions | None = None) -> Folder:
    """Write exactly the folder `push_run` would upload into `out` (new or empty; never overwritten)."""
    out = Path(out)
    existed = out.exists()
    if existed and any(out.iterdir()):
        raise PublishError(f"{out} exists and is not empty; choose a new folder (nothing was overwritten)")
    check_repo_id(repo_id)
    try:
        return build_folder(run_dir, out, repo_id, options or FolderOptions())
    except BaseException:  # a half-written folder would pass for a dry run: put back what was there (nothing)
        shutil.rmtree(out, ignore_errors=True)
        if existed:
            out.mkdir()
        raise


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
             force: bool = False, options: FolderOptions | None = None, token: str | None = None) -> PushResult:
    """Build the publishable folder of `run_dir` and push it to `repo_id` (at `revision`, a branch) as one commit.
    A repository that already holds a different model is only replaced with `force`."""
    from huggingface_hub import HfApi

    token = check_push_settings(repo_id, token)
    run = Path(run_dir)
    staging = _staging_dir(run)
    try:
        folder = build_folder(run, staging, repo_id, options or FolderOptions())
        api, branch, started = HfApi(token=token), revision or "main", time.monotonic()
        new_branch = _hub_call(lambda: _ensure_branch(api, repo_id, branch, private), repo_id, started)
        return _hub_call(lambda: _commit(api, folder, repo_id, branch, private, force, new_branch), repo_id, started)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_push_settings(repo_id: str | None, token: str | None = None) -> str:
    """The repository name and the token, checked without the network: a stage runs this before training, so that
    neither surfaces only when the run is over. Returns the token."""
    from huggingface_hub import get_token

    check_repo_id(repo_id)
    token = token or get_token()
    if not token:
        raise PublishError(f"no Hugging Face token found. Fix: {AUTH_FIX}")
    return token


def check_repo_id(repo_id: str | None) -> None:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise ValueError("name the owner too")
    except ValueError as e:
        raise PublishError(f"--repo-id {repo_id}: not ORG/NAME ({str(e).splitlines()[0]})") from None


def _staging_dir(run: Path) -> Path:
    """Next to the run, so that the weights are hard-linked rather than copied (same file system)."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{run.name}.push-", dir=run.resolve().parent))
    except OSError:
        return Path(tempfile.mkdtemp(prefix=f"{run.name}.push-"))


def _ensure_branch(api, repo_id: str, branch: str, private: bool) -> bool:
    """Create the repository and the branch when missing; True when the branch is new (nothing on it to protect)."""
    from huggingface_hub.errors import RevisionNotFoundError

    api.create_repo(repo_id, private=private, exist_ok=True)
    try:
        api.model_info(repo_id, revision=branch)
        return False
    except RevisionNotFoundError:
        api.create_branch(repo_id, branch=branch, exist_ok=True)
        return True


def _commit(api, folder: Folder, repo_id: str, branch: str, private: bool, force: bool,
            new_branch: bool) -> PushResult:
    """Read the revision, check it holds this model (or nothing), and make the one commit. Run again whole on a
    transient error, so a retry after a commit whose answer was lost finds the model there and commits nothing."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    info = api.model_info(repo_id, revision=branch)
    if private and info.private is False:
        raise PublishError(f"{repo_id} exists and is public, but --private (hub.private) was asked for; make it "
                           f"private on the Hub first or drop the flag")
    # A branch this push created holds main's files: nothing on it is anyone's to protect.
    remote_was = "new branch" if new_branch else compare_remote(info, folder, repo_id, branch, force)
    remote = [s.rfilename for s in info.siblings or []]
    operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder.path / f)) for f in folder.files]
    stale = [f for f in remote if f not in folder.files and f not in KEEP_REMOTE]
    operations += [CommitOperationDelete(path_in_repo=f) for f in stale]
    commit = api.create_commit(
        repo_id, operations, revision=branch, parent_commit=info.sha,
        commit_message=f"adapt push: {folder.what} of run {folder.run.name}",
        commit_description=f"adapt fingerprint {folder.fingerprint}; {len(folder.files)} files")
    return PushResult(repo_id, branch, commit.commit_url, folder.files, folder.fingerprint, remote_was,
                      changed=commit.oid != info.sha)


def compare_remote(info, folder: Folder, repo_id: str, branch: str, may_replace: bool) -> str:
    """new: the revision holds no files yet; same: the card there carries this run's fingerprint; replaced: a
    different model, allowed by `may_replace`. Anything else stops the push before it uploads a byte."""
    files = {s.rfilename for s in info.siblings or []} - KEEP_REMOTE
    if not files:
        return "new"
    theirs = (info.card_data.get("adapt") if info.card_data else None) or {}
    if isinstance(theirs, dict) and theirs.get("fingerprint") == folder.fingerprint:
        return "same"
    if may_replace:
        return "replaced"
    if isinstance(theirs, dict) and theirs.get("fingerprint"):
        held = (f"adapt run `{theirs.get('run')}` ({theirs.get('stage')}, {theirs.get('what')}, fingerprint "
                f"{str(theirs['fingerprint'])[:12]})")
    else:
        held = f"a model not pushed by adapt ({len(files)} files)"
    raise PublishError(f"{repo_id}@{branch} already holds a different model: {held}; this run's fingerprint is "
                       f"{folder.fingerprint[:12]}. Pass --force (recipe: hub.allow_overwrite: true) to replace it, "
                       f"or choose another --repo-id or --revision")


def _transient(error: BaseException) -> bool:
    """5xx/429 answers and connection failures, also when the library wrapped them (LFS upload errors)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    while error is not None:
        if isinstance(error, HfHubHTTPError) and getattr(error.response, "status_code", None) in TRANSIENT_STATUS:
            return True
        if isinstance(error, httpx2.TransportError):
            return True
        error = error.__cause__
    return False


def _hub_call(fn, repo_id: str, started: float):
    """`fn()` with retries and exponential backoff on transient errors, none started later than `RETRY_BUDGET_S`
    after `started` (the push's start); any other Hub error becomes one line."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    for attempt in range(RETRIES + 1):
        try:
            return fn()
        except OfflineModeIsEnabled:
            raise PublishError("HF_HUB_OFFLINE is set: unset it to push (or write the folder with --dry-run)") from None
        except Exception as e:
            if _transient(e):
                wait = RETRY_BASE_S * 2 ** attempt
                elapsed = time.monotonic() - started
                if attempt < RETRIES and elapsed + wait <= RETRY_BUDGET_S:
                    print(f"adapt push: transient error ({_first_line(e)}); retry {attempt + 1}/{RETRIES} in "
                          f"{wait:g}s", file=sys.stderr)
                    time.sleep(wait)
                    continue
                raise PublishError(f"the Hub could not take the push to {repo_id} after {attempt + 1} attempts in "
                                   f"{elapsed:.0f} s (no retry starts after {RETRY_BUDGET_S:g} s; "
                                   f"{_first_line(e)}); nothing was committed. Fix: check the network or the Hub's "
                                   f"status, then run the same command again (a push is one commit, so a retry "
                                   f"never commits twice)") from None
            if isinstance(e, HfHubHTTPError):
                raise PublishError(explain(e, repo_id)) from None
            raise


def _first_line(error: BaseException) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)[:200]


def explain(error, repo_id: str) -> str:
    status = getattr(error.response, "status_code", None)
    if status == 401:
        return f"the Hub refused the token (401 Unauthorized) for {repo_id}. Fix: {AUTH_FIX}"
    if status == 403:
        return (f"the token may not write to {repo_id} (403 Forbidden). Fix: use a token with write access to the "
                f"`{repo_id.split('/')[0]}` namespace (fine-grained tokens need write permission on it)")
    if status == 412:
        return f"{repo_id} changed while pushing (another commit landed first); run the push again"
    first = next((line for line in str(error).splitlines() if line.strip()), "")
    return f"the Hub answered {status} for {repo_id}: {first}"


def check_recipe_push(hub) -> None:
    try:
        check_push_settings(hub.repo_id)
    except PublishError as e:
        sys.exit(f"error: hub.push: {e}")


def push_from_recipe(run_dir: str | Path, hub) -> PushResult:
    """What a stage does when its recipe says `hub.push: true`; a failure names the command that retries it."""
    options = FolderOptions(what=hub.what, license=hub.license, max_shard_size=hub.max_shard_size)
    try:
        result = push_run(run_dir, hub.repo_id, private=hub.private, revision=hub.revision,
                          force=hub.allow_overwrite, options=options)
    except PublishError as e:
        sys.exit(f"error: {e} (the run is saved in {run_dir}; push it with `adapt push {run_dir} --repo-id "
                 f"{hub.repo_id}`)")
    print(f"pushed {run_dir} to {result.repo_id}@{result.revision}: {result.commit_url}")
    return result


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adapt push", description="Publish a run folder to the Hugging Face Hub "
                                     "(weights, tokenizer, model card with recipe, data and evaluation) as one commit.")
    parser.add_argument("run_dir", help="a folder written by `adapt sft|dpo`")
    parser.add_argument("--repo-id", required=True, help="ORG/NAME")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to push to (created from main when missing)")
    parser.add_argument("--dry-run", metavar="OUT_DIR", help="write the folder that would be uploaded; upload nothing")
    parser.add_argument("--force", action="store_true", help="replace a different model already in the repository")
    parser.add_argument("--what", choices=WHATS, default="auto",
                        help="model | adapter | merged (LoRA merged into its base); auto: adapter for a LoRA run")
    parser.add_argument("--license", help="license id for the card, e.g. apache-2.0")
    parser.add_argument("--max-shard-size", default="5GB", help="split a single weights file above this (5GB)")
    return parser


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    options = FolderOptions(what=args.what, license=args.license, max_shard_size=args.max_shard_size)
    try:
        if args.dry_run:
            folder = dry_run(args.run_dir, args.dry_run, args.repo_id, options)
            print(f"wrote {len(folder.files)} files to {folder.path} ({folder.what}); nothing was uploaded")
            return
        result = push_run(args.run_dir, args.repo_id, private=args.private, revision=args.revision,
                          force=args.force, options=options)
    except PublishError as e:
        sys.exit(f"error: {e}")
    if not result.changed:
        print(f"{result.repo_id}@{result.revision} already holds exactly this folder; nothing to commit")
        return
    print(f"pushed {len(result.files)} files to {result.repo_id}@{result.revision} in one commit "
          f"(repository was {result.remote_was}): {result.commit_url}")
