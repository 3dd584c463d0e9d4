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

And a resumed run continues the run its checkpoint came from. Every checkpoint holds the resolved recipe it was
trained with (`adapt_recipe.json`, written before the Trainer's `trainer_state.json`, so a complete checkpoint has
it); resuming compares it with the recipe given now, key by key, and refuses any change that alters the trajectory,
in one line naming the keys, unless `--allow-changed KEY` says the change is meant (`training.max_steps` to train
longer). Without that, a new learning rate or batch size continued the old schedule while the run's recipe.yaml
recorded the new values.
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
CHECKPOINT_RECIPE = "adapt_recipe.json"  # in each checkpoint-N: the resolved recipe it was trained with
MISSING = "(absent)"  # a key one of two compared recipes does not have
ALLOW_ALL = "all"  # `--allow-changed all`: resume whatever changed (a checkpoint written before the recipe record)

# Recipe keys (and whole sections or lists, matched as prefixes) that a resumed run may change without
# `--allow-changed`: none of them changes which rows are trained on, in which order, or what an optimizer step
# computes. Everything else, evaluation included (`load_best_model_at_end` picks the final weights), is compared.
TRAJECTORY_NEUTRAL = (
    # what happens to the folder and where it is: a checkpoint may be continued into a new run folder
    "overwrite", "training.output_dir", "training.resume_from_checkpoint",
    # when checkpoints are written and how many are kept
    "training.save_strategy", "training.save_steps", "training.save_total_limit", "training.save_only_model",
    "training.save_on_each_node",
    # what is logged, how often and where (the loss and the router statistics are computed either way)
    "training.logging_strategy", "training.logging_steps", "training.logging_first_step",
    "training.logging_nan_inf_filter", "training.log_level", "training.log_level_replica", "training.log_on_each_node",
    "training.report_to", "training.run_name", "training.project", "training.trackio_space_id",
    "training.trackio_bucket_id", "training.trackio_static_space_id", "training.disable_tqdm",
    "training.skip_memory_metrics", "training.include_num_input_tokens_seen",
    # the push when the run ends
    "hub", "training.hub_token", "training.hub_strategy", "training.hub_always_push",
    # where the same tokenized rows are kept, and how many processes build or load them (not which rows)
    "data.cache", "data.cache_dir", "training.dataset_num_proc", "training.dataloader_num_workers",
    "training.dataloader_pin_memory", "training.dataloader_persistent_workers", "training.dataloader_prefetch_factor",
    # the process's place in a launch, not a recipe value; how long a signalled run may take to save its checkpoint
    "training.local_rank", "training.stop_grace_seconds",
)


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


def _umask() -> int:
    """The process's umask, read without changing it (os.umask can only be read by setting it, which would let a
    file created by another thread meanwhile get mode 0666)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line.split()[1] for line in f if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def follow_umask(folder: str | os.PathLike) -> None:
    """Give the weights files of a folder the mode the umask gives every other file (0644 under the usual 022).
    safetensors writes a temporary file (created 0600) and renames it into place, so `model.safetensors` came out
    readable by its owner only while the tokenizer and config beside it were readable by all: a shared run folder
    whose weights nobody else could load."""
    mode = 0o666 & ~_umask()
    for path in Path(folder).glob("*"):
        if path.is_file() and path.name.endswith(WEIGHTS) and path.stat().st_mode & 0o777 != mode:
            try:
                os.chmod(path, mode)
            except OSError:  # another user's file in a shared folder: left as it is
                pass


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


def numbered_records(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """A JSONL file as (line number, object) pairs, blank lines skipped. A line that is not one JSON object (a hand
    edit, a disk that filled up mid-line) is a ValueError naming the file and the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}: line {n}: not valid JSON ({getattr(e, 'msg', e)})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {n}: expected a JSON object")
        rows.append((n, row))
    return rows


def read_records(path: str | os.PathLike) -> list[dict]:
    """A run's JSONL record (`metrics.jsonl`, `router_stats.jsonl`): one JSON object per line (numbered_records)."""
    return [row for _, row in numbered_records(path)]


# ------------------------------------------------------------------------------------------ what the weights hold
MAX_HEADER = 100 * 2**20  # safetensors' own limit on a header


def weights_problem(folder: str | os.PathLike, *, values: bool = True) -> str | None:
    """Why a folder's safetensors files cannot be read as they claim, or None. The header (8 bytes of length, then
    JSON) must parse and describe exactly the bytes that follow it: a truncated or extended file, or a corrupt header,
    is named before a loader fails on it with a traceback. With `values`, every floating tensor is read once and must
    be finite: bytes overwritten in place keep the size and the header, and would be exported or scored as NaN."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < length <= min(MAX_HEADER, size - 8):
                return f"{path.name}: not a safetensors file (its {size} bytes hold no readable header)"
            try:
                header = json.loads(f.read(length))
                end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                          default=0)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                return f"{path.name}: its safetensors header is corrupt"
        if 8 + length + end != size:
            return (f"{path.name}: its header describes {8 + length + end} bytes but the file has {size} (truncated "
                    f"or overwritten)")
    bad = non_finite_tensors(folder) if values else []
    if bad:
        return f"the weights hold NaN or inf values ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
    return None


def non_finite_tensors(folder: str | os.PathLike) -> list[str]:
    """Names of the saved tensors (every safetensors file of the folder) holding NaN or inf."""
    import torch
    from safetensors import safe_open

    bad = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad.append(name)
    return bad


def unusable_reason(folder: str | os.PathLike) -> str | None:
    """Why a model folder must not be read by export, evaluation, analysis or publishing: an incomplete run, or
    weights that are not what they claim or not finite. None for a usable folder (a run or a plain model folder)."""
    return incomplete_reason(folder) or weights_problem(folder)


def local_model_problem(ref: str) -> str | None:
    """For a model reference that names a local folder that is not there: the message. A Hub id (`org/name`) is left
    to the Hub; a path (`./x`, `/x`, `~/x`, `runs/demo/sft`, or `a/b` where `a` exists here) is not a Hub id."""
    path = Path(os.path.expanduser(ref))
    if path.exists():
        return None if path.is_dir() else f"{ref} is a file; give a model folder or a Hub id"
    slashes = ref.count("/")
    looks_local = ref.startswith((".", "/", "~")) or slashes > 1 or (slashes == 1 and path.parent.is_dir())
    return f"no such folder {ref}" if looks_local else None


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
    """`training.resume_from_checkpoint`: `latest` (the newest complete checkpoint in output_dir) or a folder,
    trained with this recipe up to the changes `config.allow_changed` names (`--allow-changed`)."""
    ref = config.resume_from_checkpoint
    if not ref:
        return None
    path = last_complete_checkpoint(Path(config.output_dir)) if ref in ("latest", "true", "True") else Path(ref)
    if path is None or not (path / "trainer_state.json").is_file():
        where = f"in {config.output_dir}" if path is None else f"at {path}"
        raise RunFolderError(f"{config.recipe_path}: training.resume_from_checkpoint: no complete checkpoint {where}; "
                             f"drop the field to start over")
    check_same_recipe(path, config.resolved_recipe(), tuple(getattr(config, "allow_changed", ())),
                      config.recipe_path)
    return str(path)


def write_checkpoint_recipe(checkpoint: str | os.PathLike, recipe: dict) -> None:
    """The resolved recipe into a checkpoint folder, before the Trainer writes the rest of it."""
    checkpoint = Path(checkpoint)
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / CHECKPOINT_RECIPE).write_text(json.dumps(recipe, indent=1, default=str) + "\n", encoding="utf-8")


def check_same_recipe(checkpoint: Path, recipe: dict, allowed: tuple[str, ...], recipe_path: str | None) -> None:
    """Refuse, in one line naming the keys, a resume whose recipe differs from the checkpoint's in anything but the
    trajectory-neutral keys and the `allowed` ones."""
    where = f"{recipe_path}: training.resume_from_checkpoint: {checkpoint}"
    now = json.loads(json.dumps(recipe, default=str))  # the values as the record holds them (enums, paths: text)
    keys = set(_leaves(now))
    unknown = [key for key in allowed if key != ALLOW_ALL and not any(_covers(key, k) for k in keys)]
    if unknown:
        raise RunFolderError(f"{recipe_path}: --allow-changed {unknown[0]}: not a key of the recipe. Fix: name a "
                             f"key as the error listing the changes spells it, e.g. training.max_steps")
    if ALLOW_ALL in allowed:
        return
    try:
        trained = json.loads((checkpoint / CHECKPOINT_RECIPE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        what = "no record" if isinstance(e, FileNotFoundError) else f"an unreadable record ({e})"
        raise RunFolderError(f"{where} has {what} of the recipe it was trained with ({CHECKPOINT_RECIPE}), so a "
                             f"changed recipe cannot be told apart. Fix: start a new run, or pass --allow-changed "
                             f"{ALLOW_ALL} if this is the recipe it was trained with") from None
    changes = {key: values for key, values in recipe_changes(trained, now).items()
               if not any(_covers(pattern, key) for pattern in (*TRAJECTORY_NEUTRAL, *allowed))}
    if changes:
        listed = "; ".join(f"{key}: {_short(old)} -> {_short(new)}" for key, (old, new) in list(changes.items())[:6])
        more = f"; and {len(changes) - 6} more" if len(changes) > 6 else ""
        raise RunFolderError(f"{where} was trained with another recipe ({listed}{more}); resuming would continue its "
                             f"trajectory under the new values. Fix: put them back, start a new run, or pass "
                             f"--allow-changed KEY for each change you mean (e.g. --allow-changed training.max_steps)")


def recipe_changes(trained: dict, now: dict) -> dict[str, tuple]:
    """Dotted key (`training.learning_rate`, `data.sources[0].rows`) -> (checkpoint's value, now) where they differ."""
    old, new = _leaves(trained), _leaves(now)
    return {key: (old.get(key, MISSING), new.get(key, MISSING)) for key in sorted(old.keys() | new.keys())
            if old.get(key, MISSING) != new.get(key, MISSING)}


def _leaves(node, prefix: str = "") -> dict:
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(node, list) and node:
        out = {}
        for i, value in enumerate(node):
            out.update(_leaves(value, f"{prefix}[{i}]"))
        return out
    return {prefix: node}


def _covers(pattern: str, key: str) -> bool:
    """`training.max_steps` covers itself; `hub` and `data.sources` cover every key inside them."""
    return key == pattern or key.startswith((pattern + ".", pattern + "["))


def _short(value) -> str:
    text = json.dumps(value) if value is not MISSING else value
    return text if len(text) <= 40 else text[:37] + "..."
