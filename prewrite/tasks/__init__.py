"""Tasks: data splits, the prompt template and answer parsing of one benchmark; mixtures of them."""

from prewrite.tasks.mixture import load_members
from prewrite.tasks.task import Task, load_task

__all__ = ["Task", "load_members", "load_task"]
