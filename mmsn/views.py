"""Multi-crop MSN views made on the device, for a whole batch at once.

The loader only ships uint8 images; random resized crops are boxes sampled per image and cut out
with ``torchvision.ops.roi_align`` in one batched call per view kind, so augmentation costs a few
kernels on the GPU instead of per-image Python in DataLoader workers (docs/method.md, Views:
1 target + 1 anchor crop at ``size``, scale 0.3-1, and F focal crops at ``focal_size``, scale 0.05-0.3).
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align

from mmsn.config import ViewsConfig
from mmsn.data.transforms import to_input

_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))  # aspect-ratio range of torchvision's RandomResizedCrop


def sample_boxes(n: int, scale: tuple[float, float], height: int, width: int,
                 generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(n, 4) boxes x0, y0, x1, y1 in pixels covering ``scale`` of the image area.

    Vectorised RandomResizedCrop: area fraction ~ U(scale), log aspect ~ U(log 3/4, log 4/3);
    a side that would exceed the image is clamped (instead of torchvision's rejection loop).
    """
    u = torch.rand(n, 4, generator=generator, device=device)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    ratio = torch.exp(_LOG_RATIO[0] + (_LOG_RATIO[1] - _LOG_RATIO[0]) * u[:, 1])
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    x0 = (1.0 - w) * u[:, 2]
    y0 = (1.0 - h) * u[:, 3]
    return torch.stack([x0 * width, y0 * height, (x0 + w) * width, (y0 + h) * height], dim=1)


class MultiCropViews:
    """Makes (target, anchor, focal) views from a uint8 batch; deterministic given the generator."""

    def __init__(self, cfg: ViewsConfig) -> None:
        self.cfg = cfg

    def crops(self, x: torch.Tensor, repeats: int, size: int, scale: tuple[float, float],
              generator: torch.Generator | None) -> torch.Tensor:
        """x (B,1,H,W) float -> (repeats*B, 1, size, size), view-major (row r*B+b is image b)."""
        b, _, height, width = x.shape
        boxes = sample_boxes(repeats * b, scale, height, width, generator, x.device)
        index = torch.arange(b, device=x.device, dtype=x.dtype).repeat(repeats)[:, None]
        out = roi_align(x, torch.cat([index, boxes.to(x.dtype)], dim=1), output_size=(size, size),
                        spatial_scale=1.0, sampling_ratio=2, aligned=True)
        return self.augment(out, generator)

    def augment(self, v: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Random horizontal flip and (optional) brightness/contrast jitter, per view."""
        n = v.shape[0]
        u = torch.rand(n, 3, generator=generator, device=v.device)
        flip = (u[:, 0] < self.cfg.hflip)[:, None, None, None]
        v = torch.where(flip, v.flip(-1), v)
        if self.cfg.jitter > 0:
            gain = 1.0 + self.cfg.jitter * (2 * u[:, 1] - 1)
            bias = self.cfg.jitter * (2 * u[:, 2] - 1)
            mean = v.mean(dim=(1, 2, 3), keepdim=True)
            v = (v - mean) * gain[:, None, None, None] + mean + bias[:, None, None, None]
        return v

    def single(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (B,H,W) -> one global crop per image (B,1,S,S), normalised (MAE's single view)."""
        return self.crops(to_input(images), 1, self.cfg.size, self.cfg.global_scale, generator)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """uint8 (B,H,W) -> target (B,1,S,S), anchor (B,1,S,S), focal (F*B,1,s,s) or None; normalised."""
        x = to_input(images)
        cfg = self.cfg
        target = self.crops(x, 1, cfg.size, cfg.global_scale, generator)
        anchor = self.crops(x, 1, cfg.size, cfg.global_scale, generator)
        focal = self.crops(x, cfg.n_focal, cfg.focal_size, cfg.focal_scale, generator) if cfg.n_focal else None
        return target, anchor, focal
