"""Every objective is DDP-safe: under DDP with ``find_unused_parameters=False`` (what Ray Train's
``prepare_model`` uses) every parameter that requires grad gets a gradient at every step, whatever the batch
holds. Two gloo processes, every objective in the registry, an EHR field missing in every row, 3 steps each:
a parameter left out of a step's graph makes the next step raise on every rank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import default_collate

from tests.conftest import free_port, tiny_source
from tests.gloo import gloo_group

WORLD = 2
# A recipe file (it names no objective, so its sections for every objective are allowed)
RUN = {"views": {"size": 32, "focal_size": 16, "n_focal": 2},
       "model": {"backbone": "vit_nano", "head_hidden": 32, "head_out": 16, "n_prototypes": 16},
       "ehr": {"embed_dim": 8, "features": ["demographic"]}, "train": {"batch_size": 8},
       "optim": {"warmup_epochs": 0, "start_lr": 1e-3}, "mae": {"decoder_dim": 16, "decoder_depth": 1},
       "mrm": {"width": 16, "depth": 1, "features": ["all"]}, "supcon": {"labels": ["sex", "age"]}}


def _cache(out: Path) -> Path:
    """A cache whose ``age`` is blank in 9 rows of 10 (sparse ages, a MIMIC stay column without MIMIC-IV)."""
    from mmsn.data.prepare import prepare

    source = tiny_source(n_patients=40, per_patient=2)
    rng = np.random.default_rng(0)
    source.table["age"] = np.where(rng.random(len(source.table)) < 0.9, np.nan, rng.uniform(20, 90, len(source.table)))
    return prepare(source, out, size=32, seed=0, split=(0.6, 0.2, 0.2), n=None)


def _worker(rank: int, port: int, cache_dir: str, out: str, recipe: str) -> None:
    from mmsn.config import load_config
    from mmsn.data.cache import open_cache
    from mmsn.engine import build_run, train_step
    from mmsn.objectives import SPECS, Batch

    torch.set_num_threads(1)
    cache = open_cache(Path(cache_dir))
    steps: dict[str, int] = {}
    with gloo_group(rank, WORLD, port):
        for name in SPECS:
            fusion = "concat_anchor" if name not in ("mrm_ehr", "supcon_ehr", "msn_supcon") else "none"
            cfg = load_config(recipe, [f"objective.name={name}", f"ehr.fusion={fusion}"])
            run = build_run(cfg, cache, torch.device("cpu"), rank, WORLD,
                            wrap=lambda m: DistributedDataParallel(m, find_unused_parameters=False))
            # this rank's batch: 8 train images whose age is blank, so no row scores the age field
            blank = np.flatnonzero(np.isnan(cache.table["age"].to_numpy()[cache.rows("train")]))
            rows = blank[rank * 8: rank * 8 + 8]
            batch = Batch(**default_collate([run.train_set[k] for k in rows]))
            for _ in range(3):  # DDP raises at the step after one that left a parameter without gradient
                train_step(run, batch)
            steps[name] = run.step
    torch.save(steps, Path(out) / f"rank{rank}.pt")


def test_every_objective_trains_under_ddp_without_unused_parameters(tmp_path: Path) -> None:
    import yaml

    from mmsn.objectives import SPECS

    cache = _cache(tmp_path / "cache")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(RUN))
    mp.spawn(_worker, args=(free_port(), str(cache), str(tmp_path), str(tmp_path / "run.yaml")), nprocs=WORLD,
             join=True)
    for rank in range(WORLD):
        assert torch.load(tmp_path / f"rank{rank}.pt") == dict.fromkeys(SPECS, 3)


def _probe_worker(rank: int, port: int, cache_dir: str, out: str, recipe: str) -> None:
    """Both ranks probe at a 'milestone' after 2 DDP steps; rank 0 also extracts every feature alone."""
    from mmsn.config import load_config
    from mmsn.data.cache import open_cache
    from mmsn.engine import build_run, train_step
    from mmsn.evaluate import split_features
    from mmsn.loop import probe_splits
    from mmsn.objectives import Batch

    torch.set_num_threads(1)
    cache = open_cache(Path(cache_dir))
    with gloo_group(rank, WORLD, port):
        cfg = load_config(recipe, ["objective.name=msn", "ehr.fusion=none"])
        run = build_run(cfg, cache, torch.device("cpu"), rank, WORLD,
                        wrap=lambda m: DistributedDataParallel(m, find_unused_parameters=False))
        batch = Batch(**default_collate([run.train_set[k] for k in range(rank * 8, rank * 8 + 8)]))
        for _ in range(2):
            train_step(run, batch)
        encoder = run.objective.eval_encoder()
        checksum = float(sum(p.double().sum() for p in encoder.parameters()))
        probes = probe_splits(run, cache, test=True)
        alone = None
        if rank == 0:
            run.objective.eval()
            alone = split_features(encoder, cache, cfg.probe, cfg.views.size, run.device, ("train", "val", "test"))[0]
    torch.save({"checksum": checksum, "probes": probes, "alone": alone}, Path(out) / f"probe{rank}.pt")


def test_a_ddp_milestone_probe_splits_the_extraction_and_equals_one_process(tmp_path: Path) -> None:
    """Under DDP every rank extracts every world-th row and rank 0 fits on them all, in row order: the same
    probe as rank 0 alone on the same encoder; the other rank gets None (and goes on training)."""
    import yaml

    from mmsn.data.cache import open_cache
    from mmsn.probe import run_probe_splits

    cache_dir = _cache(tmp_path / "cache")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(RUN))
    mp.spawn(_probe_worker, args=(free_port(), str(cache_dir), str(tmp_path), str(tmp_path / "run.yaml")),
             nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"probe{r}.pt", weights_only=False) for r in range(WORLD))
    assert r0["checksum"] == r1["checksum"]  # the premise: DDP keeps the ranks' encoders equal
    assert r1["probes"] is None and r0["probes"] is not None
    cache = open_cache(cache_dir)
    n = {split: len(cache.rows(split)) for split in ("train", "val", "test")}
    assert {split: len(x) for split, x in r0["alone"].items()} == n
    # the val scores of a fit on the features rank 0 extracted alone equal the gathered fit's
    from mmsn.config import load_config
    from mmsn.evaluate import train_patients

    cfg = load_config(str(tmp_path / "run.yaml"), ["objective.name=msn", "ehr.fusion=none"])
    labels = {split: cache.label_matrix(cache.rows(split)) for split in n}
    alone = run_probe_splits(r0["alone"], labels, cache.labels, cfg.probe, ("val", "test"), train_patients(cache),
                             torch.device("cpu"))
    np.testing.assert_allclose(r0["probes"]["val_scores"], alone["val"].scores, atol=1e-5)
    np.testing.assert_allclose(r0["probes"]["test_scores"], alone["test"].scores, atol=1e-5)
    assert abs(r0["probes"]["val"]["macro_auroc"] - alone["val"].to_json_dict()["macro_auroc"]) < 1e-6
