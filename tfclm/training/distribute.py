"""Scaling out on tf.distribute, TensorFlow's own engine: several GPUs, several hosts, TPUs.

`train.strategy` picks the strategy; the model and optimizer are built in its
scope, `train.batch_size` is per replica, and datasets are sharded by data.
Under multi-worker training only the chief writes the output dir; the other
workers keep their caches and checkpoints in temporary directories, as
TensorFlow's multi-worker guide prescribes, and every worker resumes from
the chief's checkpoints.
"""

import json
import os
import shutil
import tempfile

from tfclm.backend import tf
from tfclm.errors import ConfigError

TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'


def tf_config() -> dict | None:
    """TF_CONFIG, parsed and checked; None when it is not set."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            "TF_CONFIG", f"is not valid JSON ({exc.msg} at character {exc.pos}); set it like {TF_CONFIG_EXAMPLE}"
        ) from None
    cluster, task = (
        spec.get("cluster") if isinstance(spec, dict) else None,
        spec.get("task") if isinstance(spec, dict) else None,
    )
    if not isinstance(cluster, dict) or not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError(
            "TF_CONFIG",
            f"needs a 'cluster' of workers and this process's 'task' (type and index); set it like {TF_CONFIG_EXAMPLE}",
        )
    kind, index = task["type"], task["index"]
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(
            "TF_CONFIG", f"task {kind}:{index} is not in its cluster {sorted(cluster)}; fix task.type or task.index"
        )
    return spec


def cluster_size(spec: dict | None) -> int:
    if not spec:
        return 1
    return sum(len(hosts) for kind, hosts in spec["cluster"].items() if kind in ("chief", "worker"))


def is_chief() -> bool:
    """True unless TF_CONFIG names this process a non-chief worker."""
    try:
        spec = tf_config()
    except ConfigError:
        return True  # a malformed TF_CONFIG is reported where the strategy is made
    if not spec:
        return True
    kind, index = spec["task"]["type"], spec["task"]["index"]
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in spec["cluster"])


def make_strategy(name: str, tpu: str | None = None):
    """(strategy, a line that says which and how many replicas). Must run before other TensorFlow work."""
    spec = tf_config()
    if name == "auto":
        # Listing devices starts TensorFlow's runtime, after which collective ops can no longer be set up.
        name = (
            "tpu"
            if tpu
            else "multiworker"
            if cluster_size(spec) > 1
            else "mirrored"
            if len(tf.config.list_logical_devices("GPU")) > 1
            else "default"
        )
    if name == "multiworker":
        if spec is None:
            raise ConfigError(
                "train.strategy",
                f"multiworker needs TF_CONFIG naming the workers and this one, such as TF_CONFIG='{TF_CONFIG_EXAMPLE}'",
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "mirrored":
        # Without GPUs, several logical CPUs (tf.config.set_logical_device_configuration) are the replicas.
        cpus = tf.config.list_logical_devices("CPU")
        devices = None if tf.config.list_logical_devices("GPU") or len(cpus) < 2 else [d.name for d in cpus]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    elif name == "tpu":
        if not tpu:
            raise ConfigError(
                "train.tpu", "strategy tpu needs train.tpu: the TPU's name or grpc:// address (or 'local' on a TPU VM)"
            )
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="" if tpu == "local" else tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    elif name == "default":
        strategy = tf.distribute.get_strategy()
    else:
        raise ConfigError(
            "train.strategy", f"unknown strategy {name!r}; use auto, default, mirrored, multiworker or tpu"
        )
    return (
        strategy,
        f"{name} ({strategy.num_replicas_in_sync} replica{'s' if strategy.num_replicas_in_sync > 1 else ''})",
    )


def shard_by_data(dataset):
    """Workers split each global batch by element: a dataset made from tensors has no files to split."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


class WorkerDirs:
    """Where this worker writes: the output dir for the chief, a temporary directory for the others."""

    def __init__(self, output_dir: str):
        self.chief = is_chief()
        self.output_dir = output_dir
        self.work_dir = output_dir if self.chief else tempfile.mkdtemp(prefix="tfclm-worker-")

    def cleanup(self):
        if not self.chief:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def check_accumulation(strategy, steps: int) -> None:
    """Gradient accumulation sums micro-batches on one replica; with more, the replicas are the way to grow."""
    if strategy.num_replicas_in_sync > 1 and steps > 1:
        raise ConfigError(
            "train.gradient_accumulation_steps",
            f"works with one replica, and this run has {strategy.num_replicas_in_sync}; set it to 1 and raise "
            f"train.batch_size or the replicas instead",
        )
