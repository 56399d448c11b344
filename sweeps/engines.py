"""Engines: where shards run. ``local`` runs them in this process one after another; ``ray`` runs
them on Ray actors (one :class:`sweeps.shards.ShardWorker` per worker, holding its model, on its
GPU when the cluster has GPUs) through :class:`ray.util.ActorPool`. Ray does the scheduling.

Workers write their parts straight into the sweep's folder, so on a multi-machine cluster the
runs folder must be on storage every node sees (NFS, a shared volume).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from sweeps.shards import Shard, ShardResult, ShardWorker
from workbench.errors import InputError

ENGINES = ("local", "ray")
ROOT = Path(__file__).resolve().parent.parent  # put on the local Ray workers' PYTHONPATH


def run_local(shards: Sequence[Shard], on_result: Callable[[ShardResult], None],
              worker: ShardWorker | None = None) -> None:
    """Run ``shards`` in order in this process; ``on_result`` sees each result as it comes.
    ``worker``: one that may already hold a model (reused when a shard needs that model)."""
    worker = worker or ShardWorker()
    for shard in shards:
        on_result(worker.run(shard))


def run_ray(shards: Sequence[Shard], on_result: Callable[[ShardResult], None], *,
            address: str | None = None, workers: int | None = None,
            gpus_per_worker: float | None = None) -> None:
    """Run ``shards`` on Ray actors; results reach ``on_result`` as shards finish.

    Args:
        address: a running cluster (``ray.init(address=...)``, e.g. ``"auto"`` or
            ``"ray://head:10001"``); ``None`` starts a local cluster with ``workers`` CPUs.
        workers: actors to start (default: the cluster's CPU count, or its GPU count when
            ``gpus_per_worker`` > 0).
        gpus_per_worker: GPUs each actor holds (default: 1 when the cluster has GPUs, else 0).
    """
    import ray
    from ray.util import ActorPool

    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    started = not ray.is_initialized()
    if started and address:
        ray.init(address=address)
    elif started:
        ray.init(num_cpus=workers or 1, include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    actors = []
    try:
        resources = ray.cluster_resources()
        gpus = (1.0 if resources.get("GPU", 0) > 0 else 0.0) if gpus_per_worker is None \
            else gpus_per_worker
        fits = max(1, int(resources.get("GPU" if gpus else "CPU", 1) // (gpus or 1)))
        if workers and workers > fits:
            raise InputError(f"--workers {workers}: the cluster has room for {fits} actor(s) "
                             f"of {gpus or 1:g} {'GPU' if gpus else 'CPU'}")
        n = workers or fits
        actor = ray.remote(num_cpus=1, num_gpus=gpus)(ShardWorker)
        actors = [actor.remote() for _ in range(n)]
        pool = ActorPool(actors)
        for result in pool.map_unordered(lambda a, s: a.run.remote(s), list(shards)):
            on_result(result)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
