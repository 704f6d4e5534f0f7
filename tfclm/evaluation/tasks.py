"""`tfclm evaluate --tasks`: lm-evaluation-harness tasks on a saved model, through the `tfclm` model type."""

import importlib.util
import math
import os

from tfclm.errors import ConfigError, EnvironmentFailure, first_line


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

    from tfclm.evaluation.harness import TfclmLM

    names = [name.strip() for name in tasks.split(",") if name.strip()]
    if not names:
        raise ConfigError("--tasks", f"{tasks!r} names no task; pass names separated by commas, such as lambada_openai")
    manager = _task_manager(names, include_path)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        broken = _unreadable_yaml(include_path)
        raise ConfigError(
            "--tasks",
            f"unknown task {unknown[0]!r}; "
            + (f"{broken} in --include-path does not parse, and may be it" if broken else "list them with `lm_eval "
               "ls tasks`, or add --include-path"),
        )  # fmt: skip
    _check_tasks(names, manager)
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


def _task_manager(names: list[str], include_path: str | None):
    """The harness's index of tasks: of `include_path` alone where it holds every task named (indexing the
    harness's own thousands of task files takes seconds), else of both."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        own = TaskManager(include_path=include_path, include_defaults=False)
        if all(name in own.all_tasks for name in names):
            return own
    return TaskManager(include_path=include_path)


def _check_tasks(names: list[str], manager) -> None:
    """Before the model loads: every task's data loads, and its templates render on its first document."""
    from lm_eval.tasks import get_task_dict

    try:
        found = get_task_dict(names, manager)
    except Exception as exc:  # a missing data file, a bad dataset name, a task config the harness refuses, no network
        if isinstance(exc, (ConnectionError, TimeoutError)) or "connect" in str(exc).lower():
            raise EnvironmentFailure(
                f"--tasks: could not download a task's data ({first_line(exc)}); check the network, or run with the "
                "data cached (HF_DATASETS_OFFLINE=1)"
            ) from None
        raise ConfigError("--tasks", f"could not load the tasks {', '.join(names)}: {first_line(exc)}") from None
    for name, task in _leaves(found):
        _render_first(name, task)


def _leaves(tasks: dict):
    """(name, Task) for every task, groups opened."""
    for key, value in tasks.items():
        if isinstance(value, dict):
            yield from _leaves(value)
        else:
            yield getattr(key, "group_name", key), value


def _render_first(name: str, task) -> None:
    """A template that names a missing field, or raises, fails here, with the task's name."""
    docs = task.eval_docs
    if not len(docs):
        raise ConfigError("--tasks", f"task {name!r} has no documents in its evaluation split; check its data")
    doc = docs[0]
    try:
        task.doc_to_text(doc)
        task.doc_to_target(doc)
        if task.OUTPUT_TYPE == "multiple_choice":
            task.doc_to_choice(doc)
    except Exception as exc:  # jinja2's UndefinedError and TemplateError, KeyError, ...
        raise ConfigError(
            "--tasks", f"task {name!r}'s templates fail on its first document ({first_line(exc)}); fix its YAML"
        ) from None


def _unreadable_yaml(include_path: str | None) -> str | None:
    """The first task YAML under `include_path` that does not parse, for naming it."""
    import yaml

    class AnyTag(yaml.SafeLoader):
        pass

    AnyTag.add_multi_constructor("!", lambda loader, suffix, node: None)  # the harness's !function
    for directory, _, filenames in sorted(os.walk(include_path)) if include_path else ():
        for filename in sorted(f for f in filenames if f.endswith((".yaml", ".yml"))):
            path = os.path.join(directory, filename)
            try:
                with open(path, encoding="utf-8") as handle:
                    yaml.load(handle, Loader=AnyTag)  # noqa: S506 - a SafeLoader that also reads tags as None
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                return f"{path!r} ({first_line(exc, 120)})"
    return None
