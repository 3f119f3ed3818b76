"""The reference rows (mmsn.references: random init, raw pixels, EHR only) and the evaluation protocol's
reference features, computed as a Ray task with a trial's resources, started with the sweep: they run beside
the trials on a worker, not on the driver after them, and land under the experiment's ``references/`` where
the analysis reads them (it computes only what is missing, e.g. after a task failed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from mmsn.config import Config
from search_spaces.loader import Space


def _compute(experiment: str, cache: str, cfg: Config, protocol: dict[str, Any] | None) -> list[str]:
    """The references of the sweep's cache and of each protocol target (every fraction and draw); returns what
    it wrote."""
    from mmsn import references
    from mmsn.data.cache import open_cache
    from trainables.worker import assigned_device

    device = assigned_device(cfg.train.device)
    done = sorted(references.ensure(Path(experiment) / "references", open_cache(cache), cfg, device))
    for name, target in (protocol or {}).get("targets", []):
        where = Path(experiment) / "references" / "protocol" / str(name)
        found = references.ensure_protocol(where, open_cache(target), cfg, device,
                                           protocol["fractions"], int(protocol.get("draws", 1)))
        done += [f"{name}: {len(found)} probes"]
    return done


def start(space: Space, experiment: Path, cache: Path, protocol: dict[str, Any] | None) -> Any:
    """Start the task (a trial's CPUs and GPUs); ``ray.get`` its result, or None on a failure."""
    res = space.resources
    task = ray.remote(_compute).options(num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker,
                                        max_retries=1)
    return task.remote(str(experiment), str(cache), space.base, protocol)


def finish(ref: Any) -> str:
    """What the task did, in one line (a failure is noted: the analysis computes what is missing)."""
    try:
        done = ray.get(ref, timeout=600)
        return f"references computed beside the trials: {', '.join(done)}"
    except Exception as err:  # noqa: BLE001 - the analysis still computes what is missing
        return f"the references task failed ({type(err).__name__}: {str(err).splitlines()[0][:160]}); " \
               "the analysis computes what is missing"


__all__ = ["finish", "start"]
