"""`tfclm evaluate --tasks`: lm-evaluation-harness tasks on a saved model, through the `tfclm` model type."""

import importlib.util
import math
import os

from tfclm.errors import ConfigError


def run_tasks(
    model_dir: str,
    tasks: str,
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
) -> dict:
    """{task: {metric: value}} for the comma-separated `tasks`; the harness's own and those in `include_path`."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError("--tasks", "lm-evaluation-harness is not installed; pip install 'tfclm[eval]'")
    if include_path is not None and not os.path.isdir(include_path):
        raise ConfigError("--include-path", f"{include_path!r} is not a folder; pass the folder of your task YAML")
    import lm_eval
    from lm_eval.tasks import TaskManager

    from tfclm.evaluation.harness import TfclmLM

    names = [name.strip() for name in tasks.split(",") if name.strip()]
    manager = TaskManager(include_path=include_path)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise ConfigError(
            "--tasks", f"unknown task {unknown[0]!r}; list them with `lm_eval ls tasks`, or add --include-path"
        )
    model = TfclmLM(model_dir, batch_size=batch_size or 8, max_length=max_length)
    output = lm_eval.simple_evaluate(model=model, tasks=names, task_manager=manager, limit=limit)
    scores = {}
    for task, metrics in output["results"].items():
        scores[task] = {
            key.split(",")[0]: float(value)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not key.endswith("_stderr,none")
            and not (isinstance(value, float) and math.isnan(value))
        }  # fmt: skip
    return scores
