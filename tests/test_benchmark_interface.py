"""Every benchmark module of the suite is one `Benchmark`: the same two functions, and a summary that carries the
suite's headline metric at the value lm-eval reported."""

import inspect

import pytest

from adapt.config.benchmarks import BENCHMARKS
from adapt_eval import benchmarks
from adapt_eval.suite import RUN_KEYS, load_suite


@pytest.mark.parametrize("name", benchmarks.NAMES)
def test_module_is_a_benchmark_with_the_protocols_signatures(name):
    module = benchmarks.get(name)
    assert isinstance(module, benchmarks.Benchmark)
    for function in ("task_configs", "summarize"):
        wanted = list(inspect.signature(getattr(benchmarks.Benchmark, function)).parameters)[1:]  # without self
        assert list(inspect.signature(getattr(module, function)).parameters) == wanted, (name, function)


def _lmeval_results(configs: list[dict], value: float) -> dict[str, dict]:
    """What lm-eval reports for these configs when every metric came out at `value`."""
    results = {}
    for config in configs:
        filter_name = (config.get("filter_list") or [{"name": "none"}])[0]["name"]
        scores = {"sample_len": 10}
        for metric in config.get("metric_list") or []:
            scores[f"{metric['metric']},{filter_name}"] = value
            scores[f"{metric['metric']}_stderr,{filter_name}"] = 0.01
        results[config["task"]] = scores
    return results


@pytest.mark.parametrize("task", list(load_suite("olmoe-paper").tasks))
def test_summary_carries_the_headline_metric(task):
    suite = load_suite("olmoe-paper")
    spec = suite.tasks[task]
    module = benchmarks.get(spec["benchmark"])
    configs = module.task_configs(task, None, {k: v for k, v in spec.items() if k not in RUN_KEYS})
    assert configs and all(isinstance(c, dict) and c["task"].startswith(task) for c in configs)
    if BENCHMARKS[spec["benchmark"]].judged:  # without a judge the win rate is skipped, never 0
        summary = module.summarize(_lmeval_results(configs, 0.25))
        assert summary["win_rate"]["value"] is None and "no judge" in summary["win_rate"]["skipped"]
        assert summary["avg_length"]["value"] == 0.25
        return
    summary = module.summarize(_lmeval_results(configs, 0.25))
    headline = summary[spec["headline"]]
    assert headline["value"] == pytest.approx(0.25)
    assert set(headline) >= {"value", "stderr"}
