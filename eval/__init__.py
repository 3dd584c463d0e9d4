"""The evaluation harness, installed as `adapt.eval`: tasks, generation and scoring, reports."""

from adapt.eval.task import Item, PreferencePair, Task
from adapt.eval.tasks import get_task

__all__ = ["Item", "PreferencePair", "Task", "get_task"]
