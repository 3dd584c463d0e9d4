"""ESFT in a stage (`experts:`): choose the experts to train, then freeze everything else exactly
(adapt/model/expert_selection.py, adapt/model/expert_slices.py). The selection is kept in the run folder's
`experts.json`, written before training starts, so a resumed run trains the very same slices its checkpoint's
optimizer state belongs to, whatever routing the data would give now."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from adapt.config.experts import analysis_loads
from adapt.config.families import family
from adapt.model.expert_selection import (
    ExpertSelectionError,
    route,
    sample_sequences,
    scores_from_analysis,
    select,
    selection_record,
)
from adapt.model.expert_slices import freeze

log = logging.getLogger(__name__)

RECORD = "experts.json"


def add_expert_selection(model, config, train_rows) -> dict | None:
    """Select and freeze when the recipe asks (`experts.select` other than `all`); the record `experts.json` holds,
    or None. Every process ends with the same selection (the routing sums are added over processes)."""
    section = config.experts
    if section.select == "all":
        return None
    f = family(model.config.get_text_config().model_type)
    try:
        record = _selection(model, config, train_rows)
        selected = {int(layer): entry["selected"] for layer, entry in record["layers"].items()}
        for line in freeze(model, f, selected, section.train):
            log.warning(line)
    except ExpertSelectionError as e:
        sys.exit(f"error: {config.recipe_path}: {e}")
    return record


def _selection(model, config, train_rows) -> dict:
    section = config.experts
    if config.resume_from_checkpoint:
        saved = Path(config.output_dir) / RECORD
        if not saved.is_file():
            sys.exit(f"error: {config.recipe_path}: training.resume_from_checkpoint: {saved} is missing, so the "
                     f"experts the checkpoint trained are not known. Fix: start the run again without resuming")
        return json.loads(saved.read_text(encoding="utf-8"))
    if section.select == "list":
        return selection_record({int(k): sorted(v) for k, v in section.experts.items()}, None, criterion="list",
                                threshold=None, source="recipe", also_trained=section.train)
    if section.from_analysis:
        scores = scores_from_analysis(*analysis_loads(Path(section.from_analysis).expanduser(),
                                                      section.analysis_model))
        source = f"analysis:{section.from_analysis}"
        text_config = model.config.get_text_config()
        experts = getattr(text_config, family(text_config.model_type).experts_attr)
        if scores.chosen_LE.shape[1] != experts:
            raise ExpertSelectionError(f"experts.from_analysis: it analysed models of {scores.chosen_LE.shape[1]} "
                                       f"experts per layer, this one has {experts}; analyse this model")
    else:
        from accelerate import PartialState

        state = PartialState()
        sequences = sample_sequences(train_rows, config.stage, section.max_rows, config.data.seed)
        model.to(state.device)  # the trainer would place it there anyway; routing on the CPU would take hours
        scores = route(model, sequences, batch_size=config.per_device_train_batch_size,
                       shard=(state.process_index, state.num_processes),
                       all_reduce=_all_reduce if state.num_processes > 1 else None)
        source = "training data"
    chosen = select(scores, section.select, section.threshold)
    return selection_record(chosen, scores, criterion=section.select, threshold=section.threshold, source=source,
                            also_trained=section.train)


def _all_reduce(tensor):
    import torch.distributed as dist

    dist.all_reduce(tensor)
    return tensor


def write_record(record: dict | None, output_dir: str, is_main: bool) -> None:
    """`experts.json` into the claimed run folder, before training (module note)."""
    if record is not None and is_main:
        (Path(output_dir) / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
