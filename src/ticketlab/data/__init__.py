"""Tasks. The registry and base types live in ``data.base`` (a leaf); plug-ins are imported once by
``ticketlab.plugins``."""

from ticketlab.data.base import TASKS, Inputs, Split, Task, build_task, images_to_tensor, split_indices, task_from_arrays

__all__ = ["TASKS", "Inputs", "Split", "Task", "build_task", "images_to_tensor", "split_indices", "task_from_arrays"]
