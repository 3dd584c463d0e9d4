"""`adapt_eval`, the evaluation harness: benchmark suites run through lm-eval (`suite.py`), re-scoring of stored
completions, the code sandbox, judges, and comparison reports.

It lives in the repository's `eval/` folder, which is its source root (as `src/` is in a src-layout project): the
folder `eval/adapt_eval/` is the package `adapt_eval`, so imports and files match. It is not called `eval`, which
would shadow the builtin for anyone who imports it. Tasks (the `Task` shape shared with training data) live in
`adapt.tasks`, below both the data layer and this harness.
"""
