"""Torch dataset over a cache split: uint8 images (views are made on the device) + encoded EHR."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mmsn.data.cache import Cache
from mmsn.data.ehr import EHREncoder, resolve_features


class CacheImages(Dataset[dict[str, torch.Tensor]]):
    """Row ``k`` -> {"images": uint8 (H, W), "ehr_input": float32 (w,)}: the fields of an
    ``mmsn.objectives.Batch`` once collated. Images stay memory-mapped."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, ehr: np.ndarray) -> None:
        if len(rows) != len(ehr):
            raise ValueError(f"{len(rows)} rows but {len(ehr)} EHR vectors")
        self.images, self.rows, self.ehr = images, rows, ehr

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        image = torch.from_numpy(np.array(self.images[self.rows[k]]))  # copy out of the read-only mmap
        return {"images": image, "ehr_input": torch.from_numpy(self.ehr[k])}


def fit_ehr_encoder(cache: Cache, features: tuple[str, ...], fusion: str) -> EHREncoder:
    """The EHR encoder of a run: chosen features, statistics fit on the train split only."""
    if fusion == "none":
        return EHREncoder(())
    columns = resolve_features(features, cache.ehr_columns)
    train = cache.table["split"].to_numpy() == "train"
    return EHREncoder.fit(cache.table, columns, train)


def split_dataset(cache: Cache, split: str, encoder: EHREncoder) -> CacheImages:
    rows = cache.rows(split)
    ehr = encoder.transform(cache.table.iloc[rows]).astype(np.float32)
    return CacheImages(cache.images, rows, ehr)
