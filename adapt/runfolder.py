"""The run folder's two guarantees, shared by the stages that write it and by everything that reads it (the next
stage, `adapt eval`, `adapt push`):

- One run at a time. The main process holds an exclusive `flock` on `<output_dir>/.adapt.lock` from before it looks
  at the folder until the run ends, so a second run to the same folder (with `--overwrite` too) is refused instead of
  interleaving `metrics.jsonl` or deleting the first run's files. The OS drops the lock when the process dies, so a
  killed run never leaves a stale lock behind.
- Complete or refused. `run.json` is written last, atomically (a temporary file renamed into place), and lists every
  file of the folder with its size. A folder that holds a run's records but no `run.json` was interrupted while
  saving; one missing a file the record lists, or whose weights changed size, was damaged since. Readers refuse both
  with one line naming what is missing. A run the toolkit stopped on purpose (a non-finite loss, a failed router
  audit, `router.on_collapse: stop`) leaves `stopped.json` instead, and readers give its reason. A folder with no
  run records (a plain `save_pretrained` folder, a Hub snapshot) is not a run and is taken as it is.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

LOCK = ".adapt.lock"
MARKER = "run.json"
STOPPED = "stopped.json"  # a run the toolkit stopped on purpose (router audit or collapse, non-finite loss): why
RUN_RECORDS = ("recipe.yaml", "metrics.jsonl", "router_stats.jsonl", "data_summary.json", "experts.json", LOCK)
WEIGHTS = (".safetensors", ".bin")


class RunFolderError(RuntimeError):
    """A run-folder problem, as one line naming the folder and the fix."""


class RunLock:
    """`with RunLock(folder):` or `lock = RunLock(folder).acquire()` ... `lock.release()`."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFolderError(f"{self.folder}: cannot write the run folder ({e.strerror or e}); choose a "
                                 f"writable training.output_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderError(f"{self.folder} is in use by a running stage ({holder}); wait for it to end or "
                                 f"choose another training.output_dir (--overwrite does not take over a live "
                                 f"run)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays, unlocked
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holds_run(folder: str | os.PathLike) -> bool:
    """Whether the folder has anything in it besides the lock file."""
    folder = Path(folder)
    return folder.is_dir() and any(p.name != LOCK for p in folder.iterdir())


def clear(folder: str | os.PathLike) -> None:
    """Empty a folder for `--overwrite`, keeping the lock file the caller holds."""
    for path in Path(folder).iterdir():
        if path.name == LOCK:
            continue
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def write_marker(folder: str | os.PathLike, record: dict) -> Path:
    """Write `run.json` last: the record plus the size of every file in the folder (checkpoints excluded)."""
    folder = Path(folder)
    (folder / STOPPED).unlink(missing_ok=True)  # a run resumed after a stop and finished is complete
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())
             if p.is_file() and p.name not in (LOCK, MARKER)}
    tmp = folder / f".{MARKER}.tmp"
    tmp.write_text(json.dumps({**record, "complete": True, "files": files}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MARKER)
    return folder / MARKER


def write_stopped(folder: str | os.PathLike, reason: str, step: int) -> None:
    """Mark a run the toolkit stopped: no `run.json`, and the reason every reader of the folder then gives."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STOPPED}.tmp"
    tmp.write_text(json.dumps({"complete": False, "global_step": step, "reason": reason}, indent=2) + "\n",
                   encoding="utf-8")
    os.replace(tmp, folder / STOPPED)


def incomplete_reason(folder: str | os.PathLike) -> str | None:
    """Why a run folder cannot be used (None when it is complete, or is not a run folder at all)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    marker = folder / MARKER
    if not marker.is_file() and (folder / STOPPED).is_file():
        try:
            stopped = json.loads((folder / STOPPED).read_text(encoding="utf-8"))
            return f"the run was stopped after {stopped['global_step']} optimizer step(s): {stopped['reason']}"
        except (OSError, ValueError, KeyError, TypeError):
            return f"its {STOPPED} says the run was stopped; run the stage again"
    if not marker.is_file():
        records = [name for name in RUN_RECORDS if (folder / name).exists()]
        if not records:
            return None
        return (f"it has the records of a run ({', '.join(records)}) but no {MARKER}: the run stopped before it "
                f"finished saving; run the stage again (with --overwrite, or resume from a checkpoint)")
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"its {MARKER} cannot be read ({e}); run the stage again"
    missing, changed = [], []
    for name, size in (record.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            missing.append(name)
        elif name.endswith(WEIGHTS) and path.stat().st_size != size:  # records may be edited; weights may not
            changed.append(name)
    if missing or changed:
        what = [f"{', '.join(names[:5])} {verb}"
                for names, verb in ((missing, "missing"), (changed, "changed")) if names]
        return f"{' and '.join(what)} since the run saved it; run the stage again"
    return None


def check_complete(folder: str | os.PathLike) -> None:
    reason = incomplete_reason(folder)
    if reason:
        raise RunFolderError(f"{folder}: incomplete run folder: {reason}")


def claim(config, is_main: bool) -> RunLock | None:
    """Claim a stage's run folder: lock it (a second run to the same folder is refused while this one lives), then
    replace an existing run only when the recipe says `overwrite` (checked again here because the folder may have
    appeared since the recipe was validated); a resumed run keeps it. The main process holds the lock until the run
    ends; the other ranks only make sure the folder exists."""
    out = Path(config.output_dir)
    if not is_main:
        out.mkdir(parents=True, exist_ok=True)
        return None
    lock = RunLock(out).acquire()
    if holds_run(out) and not config.resume_from_checkpoint:
        if not config.overwrite:
            lock.release()
            raise RunFolderError(f"{out} already holds a run; choose another training.output_dir or pass --overwrite")
        clear(out)
    return lock


def last_complete_checkpoint(out: Path) -> Path | None:
    """The newest `checkpoint-N` whose `trainer_state.json` exists. The Trainer writes that file last, so a
    checkpoint interrupted while being written has none and is passed over: it never replaces the last good one."""
    candidates = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    complete = [p for p in candidates if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def resume_checkpoint(config) -> str | None:
    """`training.resume_from_checkpoint`: `latest` (the newest complete checkpoint in output_dir) or a folder."""
    ref = config.resume_from_checkpoint
    if not ref:
        return None
    path = last_complete_checkpoint(Path(config.output_dir)) if ref in ("latest", "true", "True") else Path(ref)
    if path is None or not (path / "trainer_state.json").is_file():
        where = f"in {config.output_dir}" if path is None else f"at {path}"
        raise RunFolderError(f"{config.recipe_path}: training.resume_from_checkpoint: no complete checkpoint {where}; "
                             f"drop the field to start over")
    return str(path)
