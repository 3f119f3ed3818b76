"""Torch dataset over a cache split: uint8 images (views are made on the device) + encoded EHR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mmsn.data.cache import Cache
from mmsn.data.ehr import EHREncoder, resolve_features
from mmsn.data.targets import PseudoLabeler, PseudoLabelSpec, RecordEncoder, fit_pseudo_labels, fit_record_targets
from mmsn.models.fusion import takes_ehr


class CacheImages(Dataset[dict[str, torch.Tensor]]):
    """Row ``k`` -> {"images": uint8 (H, W), "ehr_input": float32 (w,), and the EHR targets when the run
    has them ("ehr_targets" (F,), "pseudo_labels" (L,))}: the fields of an ``mmsn.objectives.Batch``
    once collated. Images stay memory-mapped."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, ehr: np.ndarray,
                 targets: dict[str, np.ndarray] | None = None) -> None:
        if len(rows) != len(ehr) or any(len(v) != len(rows) for v in (targets or {}).values()):
            raise ValueError(f"{len(rows)} rows but {len(ehr)} EHR vectors / targets of another length")
        self.images, self.rows, self.ehr, self.targets = images, rows, ehr, targets or {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        image = torch.from_numpy(np.array(self.images[self.rows[k]]))  # copy out of the read-only mmap
        extra = {name: torch.from_numpy(values[k]) for name, values in self.targets.items()}
        return {"images": image, "ehr_input": torch.from_numpy(self.ehr[k]), **extra}


def fit_ehr_encoder(cache: Cache, features: tuple[str, ...], fusion: str) -> EHREncoder:
    """The EHR encoder of a run: chosen features, statistics fit on the train split only; no columns when
    the fusion reads no EHR."""
    if not takes_ehr(fusion):
        return EHREncoder(())
    columns = resolve_features(features, cache.ehr_columns)
    train = cache.table["split"].to_numpy() == "train"
    return EHREncoder.fit(cache.table, columns, train)


@dataclass(frozen=True)
class EHRTargets:
    """The EHR as a training target, independent of the fusion input: MRM's record fields and SupCon's
    pseudo-labels, fit on the train split. ``record_classes``: class count per record field, 0 for a
    continuous one (what the record decoder is built for)."""

    record: RecordEncoder | None = None
    pseudo: PseudoLabeler | None = None  # the EHR/patient pseudo-labels, in ``labels`` order without "image"
    labels: tuple[str, ...] = ()  # supcon.labels: the pseudo-label columns, in order ("image" = SimCLR's positives)

    @property
    def record_classes(self) -> tuple[int, ...]:
        if self.record is None:
            return ()
        return (*self.record.n_classes, *(0,) * len(self.record.continuous_fields))

    def arrays(self, cache: Cache, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Batch fields for cache ``rows``: ``ehr_targets`` (N, F) float32 (category codes as floats, NaN =
        missing) and ``pseudo_labels`` (N, L) int64 (-1 = missing); only those the run uses."""
        table, out = cache.table.iloc[rows], {}
        if self.record is not None:
            cat, cont = self.record.transform(table)
            out["ehr_targets"] = np.concatenate([np.where(cat < 0, np.nan, cat), cont], axis=1).astype(np.float32)
        if self.labels:
            fitted = iter(self.pseudo.transform(table).T if self.pseudo is not None else ())
            # "image": the cache row, unique over the whole cache, so other workers' images never match.
            columns = [np.asarray(rows, np.int64) if label == "image" else next(fitted) for label in self.labels]
            out["pseudo_labels"] = np.stack(columns, axis=1)  # (N, L), the order of supcon.labels and its weights
        return out


def record_targets(cache: Cache, features: tuple[str, ...], key: str) -> EHRTargets:
    """The EHR fields ``features`` (groups and/or columns) as a record to reconstruct, fit on train; ``key``
    is the config key errors name."""
    train = cache.table["split"].to_numpy() == "train"
    fields = resolve_features(features, cache.ehr_columns)
    return EHRTargets(record=fit_record_targets(cache.table, fields, train, key=key))


def pseudo_label_targets(cache: Cache, labels: tuple[str, ...], weights: tuple[float, ...], bins: int,
                         binning: str, key: str) -> EHRTargets:
    """EHR columns (or ``patient``; ``image`` is each image its own class) as pseudo-labels, continuous
    ones binned (``bins``, ``binning``), fit on train; ``weights`` one per label (empty: 1 each)."""
    train, kinds = cache.table["split"].to_numpy() == "train", {c.name: c.kind for c in cache.ehr_columns}
    weights = weights or (1.0,) * len(labels)
    specs = [PseudoLabelSpec(label, w, bins if kinds.get(label) == "continuous" else 0, binning)
             for label, w in zip(labels, weights) if label != "image"]
    pseudo = fit_pseudo_labels(cache.table, cache.ehr_columns, specs, train, key=key) if specs else None
    return EHRTargets(pseudo=pseudo, labels=labels)


def split_dataset(cache: Cache, split: str, encoder: EHREncoder, targets: EHRTargets | None = None) -> CacheImages:
    rows = cache.rows(split)
    ehr = encoder.transform(cache.table.iloc[rows]).astype(np.float32)
    return CacheImages(cache.images, rows, ehr, targets.arrays(cache, rows) if targets is not None else None)
