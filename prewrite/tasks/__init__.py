"""Tasks: data splits, the prompt template and answer parsing of one benchmark."""

from prewrite.tasks.task import Task, load_task

__all__ = ["Task", "load_task"]
