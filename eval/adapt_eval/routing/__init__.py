"""`adapt analyze`: what adaptation did to the router, on the same tokens for every model.

- `metrics.py`: the OLMoE paper's routing metrics, counted batch by batch (load, dead experts, co-activation, domain
  and vocabulary specialization, router saturation);
- `data.py`: the texts a domain spec names (`task:`, `benchmark:`, `suite:`, `recipe:`, a JSONL file);
- `run.py`: the whole analysis over several models, one loaded at a time, on one or more processes;
- `plots.py`: the pictures (per-model load, saturation, a training run's load over its steps);
- `report.py`: analysis.json and the section `adapt report` and the model card show.

The routing itself is captured by the hooks training uses too (adapt.model.routing.RoutingRecorder). Nothing here
is imported by this package itself: `adapt --help` and `adapt report` import only the parts they need.
"""
