"""Registered tasks, by name."""

from __future__ import annotations

from adapt.tasks.reverse import ReverseTask
from adapt.tasks.task import Task

TASKS: dict[str, type[Task]] = {ReverseTask.name: ReverseTask}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()
