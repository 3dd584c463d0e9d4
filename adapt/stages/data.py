"""A stage's training data under a launcher: built once per cache, every other process waits and memory-maps it.

With one cache folder that every process sees (one machine, or a cluster's shared filesystem), global rank 0 builds
the mixture while the others wait at a barrier, then they load the entry it wrote. When each machine has its own cache
folder (a node-local disk), rank 0 of each machine builds it for that machine. Which of the two is true is detected,
not configured: a recipe setting could claim a shared folder that is not, and then every process of the other machines
would find no entry and build at once. The test: global rank 0 writes a marker with a random name into the cache
folder, and every process looks for it.

With `data.cache: false` each process builds its own copy (nothing is shared to wait for); the stage says so.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from adapt.data import cache
from adapt.data.prepare import PreparedData, prepare_data


def cache_folder(config) -> Path:
    return Path(config.data.cache_dir).expanduser() if config.data.cache_dir else cache.default_cache_dir()


def cache_is_shared(folder: Path) -> bool:
    """Whether every process sees the same cache folder (a collective: every process must call it)."""
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1 or int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes)) == state.num_processes:
        return True  # one machine
    token = [uuid.uuid4().hex if state.is_main_process else None]
    dist.broadcast_object_list(token, src=0)
    marker = folder / f".shared-{token[0]}"
    if state.is_main_process:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:  # no raise on one rank while the others wait: the build reports the unwritable folder
            pass
    state.wait_for_everyone()
    seen = [None] * state.num_processes
    dist.all_gather_object(seen, marker.exists())
    state.wait_for_everyone()
    if state.is_main_process:
        marker.unlink(missing_ok=True)
    return all(seen)


def stage_data(config, tokenizer) -> PreparedData:
    """The stage's tokenized mixture, built once per cache folder (see the module's note)."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1 and not config.data.cache:
        if state.is_main_process:
            print(f"note: data.cache is false: each of the {state.num_processes} processes builds the mixture "
                  f"itself; with the cache on it is built once and memory-mapped by the others")
        return prepare_data(config.stage, config.data, config.sequence_layout(), tokenizer)
    shared = state.num_processes == 1 or cache_is_shared(cache_folder(config))
    with config.main_process_first(local=not shared, desc="data"):  # the builder first, then the others load
        return prepare_data(config.stage, config.data, config.sequence_layout(), tokenizer)
