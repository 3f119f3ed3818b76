"""Multi-process gloo groups for the distributed loss tests (CPU, 127.0.0.1)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch.distributed as dist


@contextmanager
def gloo_group(rank: int, world: int, port: int) -> Iterator[None]:
    """This process as ``rank`` of a ``world``-process gloo group on 127.0.0.1:``port``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A short timeout: if one worker dies, the other fails fast instead of hanging the suite.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    try:
        yield
    finally:
        dist.destroy_process_group()
