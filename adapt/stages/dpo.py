"""The DPO stage: `adapt dpo --config R` or `accelerate launch -m adapt.stages.dpo --config R`.

Reads top to bottom: recipe -> tokenizer -> data -> policy and reference -> trainer -> train -> save.
"""

from __future__ import annotations

import copy
import time

from transformers import set_seed

from adapt.data.tokenizer import load_tokenizer
from adapt.stages.data import stage_data
from adapt.stages.entry import stage_main
from adapt.stages.experts import add_expert_selection
from adapt.stages.train import add_adapters, check_family, load_policy, prepare_model, train_and_save
from adapt.trainers import AdaptDPOTrainer, MetricsJSONLCallback


def run(config):
    started = time.time()
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    # The model's config before the data (seconds, and a model this launch cannot build is refused at once), the
    # data before the weights: a bad row or file stops the run in seconds, not after the weights load.
    check_family(config, tokenizer=tokenizer)
    data = stage_data(config, tokenizer)  # built once per cache folder, memory-mapped by the other processes
    model = load_policy(config, tokenizer)
    prepare_model(model, config)
    if config.peft.method == "lora":
        # No second copy of the weights: TRL keeps a frozen copy of the fresh adapter ("ref") as the reference, so
        # the reference is the model this stage starts from (an adapter folder arrives merged: the SFT policy).
        model, ref_model = add_adapters(model, config), None
    else:
        # The reference is passed explicitly: TRL 1.16 fails building one from a model object without a path.
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    experts = add_expert_selection(model, config, data.train)  # ESFT when the recipe asks (experts:)
    trainer = AdaptDPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=data.train,
                              eval_dataset=data.eval, processing_class=tokenizer,
                              callbacks=[MetricsJSONLCallback()])
    return train_and_save(trainer, config, tokenizer, started, data_summary=data.summary, experts=experts)


def main(argv=None):
    stage_main("dpo", run, argv)


if __name__ == "__main__":
    main()
