"""A sweep's data: the primary cache and the evaluation protocol's caches, prepared once under
``STORAGE/caches`` (as a Ray task on a worker node when Ray is up, with that node's CPUs; here otherwise).

Each cache is named by its whole data spec (a hash), and a reused cache is checked against the spec it
recorded. An evaluation dataset is prepared without the patients of the primary cache, so the encoder is
never probed on a patient it was pretrained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmsn.data.cache import open_cache
from mmsn.errors import ConfigError, MMSNError
from search_spaces.loader import DataSpec, Space

if TYPE_CHECKING:
    from mmsn.protocol import Protocol

DATA_SPEC = "data_spec.json"  # inside a sweep's cache: the whole data spec it was prepared from
SYNTHETIC = ("synthetic", "synthetic_b")


def cache_dir(storage: Path, spec: dict[str, Any]) -> Path:
    """``STORAGE/caches/<dataset>-<size>px-n<n>-seed<seed>-<hash>``: the hash covers the whole data spec
    (root and split too), so a space with another split or root never reuses the first cache."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    return storage / "caches" / f"{spec['dataset']}-{spec['size']}px-n{spec['n'] or 'all'}-seed{spec['seed']}-{digest}"


def full_spec(data: DataSpec, exclude_of: Path | None = None) -> dict[str, Any]:
    """Everything a cache's content depends on: the data spec, the synthetic renderer's version and the
    cache whose patients were left out."""
    spec = dataclasses.asdict(data)
    if data.dataset in SYNTHETIC:  # a changed renderer draws other films: never reuse the old ones
        from mmsn.data.synthetic import RENDERER_VERSION

        spec["renderer"] = RENDERER_VERSION
    if exclude_of is not None:
        spec["exclude_patients_of"] = exclude_of.name
    return spec


def _prepared(out: Path, spec: dict[str, Any]) -> bool:
    try:
        open_cache(out)
        return bool(json.loads((out / DATA_SPEC).read_text()) == spec)
    except (MMSNError, OSError, json.JSONDecodeError):
        return False


def ensure_data(data: DataSpec, storage: Path, exclude_of: Path | None = None) -> Path:
    """The cache of ``data`` under ``STORAGE/caches``, prepared if it is not there yet (without the patients
    of the cache ``exclude_of``, if given)."""
    spec = full_spec(data, exclude_of)
    out = cache_dir(storage, spec)
    if _prepared(out, spec):
        return out
    exclude = () if exclude_of is None else set(open_cache(exclude_of).table["patient_id"].astype(str))
    import ray

    # a worker node's CPUs for a real dataset; a small cache is ready before a Ray worker would have started
    on_ray = ray.is_initialized() and (data.n is None or data.n >= RAY_PREPARE_FROM)
    cpus = preparation_cpus() if on_ray else 1
    where = "on a worker node" if on_ray else "here"
    print(f"preparing {data.dataset} cache ({data.n or 'all'} images at {data.size} px) with {cpus} "
          f"process{'es' if cpus > 1 else ''} {where} -> {out}", flush=True)
    start = time.time()
    if on_ray:
        ray.get(ray.remote(_prepare).options(num_cpus=cpus).remote(data, out, exclude, cpus))
    else:
        _prepare(data, out, exclude, cpus)
    print(f"prepared {out.name} in {time.time() - start:.0f} s", flush=True)
    (out / DATA_SPEC).write_text(json.dumps(spec, indent=1) + "\n")
    return out


def _prepare(data: DataSpec, out: Path, exclude: set[str] | tuple[()], workers: int) -> None:
    """Decode and resize the images into the cache with ``workers`` processes (a Ray task on a worker node: the
    cluster is idle before the first trial, and the images may sit on network storage)."""
    from mmsn.data.prepare import prepare
    from mmsn.data.registry import load_source
    from mmsn.data.splits import parse_fractions

    split = "official" if data.split == "official" else parse_fractions(data.split)
    source = load_source(data.dataset, Path(data.root) if data.root else None, data.seed)
    prepare(source, out, size=data.size, seed=data.seed, split=split, n=data.n, overwrite=True,
            exclude_patients=exclude, workers=workers)


MAX_PREPARE_CPUS = 16  # past this, reading the raw images from storage is what limits preparation
RAY_PREPARE_FROM = 2000  # images: smaller caches (smoke corners) are prepared by the driver itself


def preparation_cpus() -> int:
    """The CPUs of the connected cluster's largest node (at most MAX_PREPARE_CPUS), all free before trials."""
    from trainables.resources import cluster_nodes

    return max(1, min(MAX_PREPARE_CPUS, int(max((n.cpus for n in cluster_nodes()), default=1))))


def ensure_cache(space: Space, storage: Path) -> Path:
    """The space's primary cache (what its trials pretrain on and probe)."""
    return ensure_data(space.data, storage)


def check_roots(space: Space, storage: Path) -> None:
    """Before Ray starts: every dataset the sweep still has to prepare (the primary and the evaluation
    datasets) has a readable root when its adapter needs one. The error names the key."""
    from mmsn.data.registry import DATASETS

    primary = cache_dir(storage, full_spec(space.data))
    specs = [("data", space.data, full_spec(space.data))] + [
        (f"evaluate.datasets[{i}]", d, full_spec(d, primary)) for i, d in enumerate(space.evaluate.datasets)]
    for key, data, spec in specs:
        if _prepared(cache_dir(storage, spec), spec):
            continue  # already prepared: its raw files are not read again
        if DATASETS[data.dataset].needs_root and not data.root:
            raise ConfigError(f"{space.path}: {key}.root: dataset {data.dataset!r} needs the folder of its raw files")
        if data.root and not (os.path.isdir(data.root) and os.access(data.root, os.R_OK | os.X_OK)):
            raise ConfigError(f"{space.path}: {key}.root: {data.root} is not a readable directory")


def prepare_protocol(space: Space, storage: Path, primary: Path) -> Protocol | None:
    """The evaluation protocol of the space (None if it has none): its caches prepared (other patients
    than the primary's), every label fraction checked on every target before the first trial starts."""
    from mmsn.protocol import Protocol, check_fractions, target_key

    ev = space.evaluate
    if not ev.active:
        return None
    targets = [(space.data.dataset, str(primary))]
    for i, data in enumerate(ev.datasets):
        key = target_key(data.dataset, i, [k for k, _ in targets])
        targets.append((key, str(ensure_data(data, storage, exclude_of=primary))))
    for key, path in targets:
        try:
            check_fractions(key, open_cache(path), ev.label_fractions, ev.draws, space.base.probe.seed)
        except MMSNError as err:
            raise ConfigError(f"{space.path}: {err}") from None
    return Protocol(tuple(targets), ev.label_fractions, ev.draws)
