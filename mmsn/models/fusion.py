"""EHR encoder and the registry of ways to fuse it into MSN's anchor branch.

Every strategy has one interface (``Fusion``), so the model never branches on the name:
``extra_tokens(e)`` may add tokens inside the backbone, ``forward(cls, e)`` may change the CLS
feature after it, and ``in_target`` says whether the EMA target branch fuses too (through its
own EMA copy). CXR-EHR-MSN (docs/method.md, Fusion strategies) is ``concat_anchor``; the rest are ablations.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from mmsn.errors import ConfigError, unknown_name


class EHREmbed(nn.Module):
    """EHR row (B, in_dim) -> embedding (B, embed_dim).

    ``hidden == 0``: one Linear with no activation, as CXR-EHR-MSN; otherwise Linear-GELU-Linear.
    """

    def __init__(self, in_dim: int, embed_dim: int, hidden: int = 0) -> None:
        super().__init__()
        if hidden == 0:
            self.net: nn.Module = nn.Linear(in_dim, embed_dim)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class Fusion(nn.Module):
    """One fusion strategy: CLS feature (B, d) + EHR embedding (B, E) -> fused feature (B, d)."""

    in_target: ClassVar[bool] = False  # does the target branch fuse too (through an EMA copy)?
    takes_ehr: ClassVar[bool] = True  # does the strategy read the EHR row at all?

    def __init__(self, dim: int = 0, embed_dim: int = 0) -> None:
        super().__init__()

    def extra_tokens(self, e: Tensor) -> Tensor | None:
        """Tokens (B, T, d) appended to the backbone's input tokens; None when the strategy adds none."""
        return None

    def forward(self, cls: Tensor, e: Tensor) -> Tensor:
        """cls (B, d), e (B, E) -> (B, d)."""
        raise NotImplementedError


class NoFusion(Fusion):
    """Vanilla MSN: the image alone."""

    takes_ehr: ClassVar[bool] = False

    def forward(self, cls: Tensor, e: Tensor) -> Tensor:
        return cls


class ConcatFusion(Fusion):
    """CXR-EHR-MSN: Linear(d + E, d)(concat[cls, e]), in the anchor branch only.

    The target stays image-only, so the EHR acts as side information that helps the anchor predict
    the image's prototype assignment, and evaluation needs no EHR.
    """

    def __init__(self, dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim + embed_dim, dim)

    def forward(self, cls: Tensor, e: Tensor) -> Tensor:
        return self.proj(torch.cat([cls, e.to(cls.dtype)], dim=-1))  # type: ignore[no-any-return]


class ConcatBothFusion(ConcatFusion):
    """As ``concat_anchor``, and the target branch fuses too through the EMA copy (an earlier
    CXR-EHR-MSN variant): both sides of the prediction see the EHR."""

    in_target: ClassVar[bool] = True


class TokenFusion(Fusion):
    """Linear(E, d)(e) becomes one extra input token; it shapes the CLS token through attention."""

    def __init__(self, dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(embed_dim, dim)

    def extra_tokens(self, e: Tensor) -> Tensor:
        return self.proj(e).unsqueeze(1)  # type: ignore[no-any-return]  # (B, 1, d)

    def forward(self, cls: Tensor, e: Tensor) -> Tensor:
        return cls  # the EHR token already acted inside the blocks


class FiLMFusion(Fusion):
    """Feature-wise modulation: cls * (1 + gamma(e)) + beta(e), gamma and beta linear in e.

    Both layers start at zero, so training starts from vanilla MSN and the EHR enters only as far as
    gradients pull it in; the gradient of gamma's weight is (dL/dout * cls) e^T, non-zero at zero.
    """

    def __init__(self, dim: int, embed_dim: int) -> None:
        super().__init__()
        self.gamma = nn.Linear(embed_dim, dim)
        self.beta = nn.Linear(embed_dim, dim)
        for layer in (self.gamma, self.beta):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, cls: Tensor, e: Tensor) -> Tensor:
        return cls * (1 + self.gamma(e)) + self.beta(e)


NO_FUSION = "none"  # ehr.fusion of a run that fuses no EHR: the EHR-free counterpart of every fusion

# name -> class(dim d of the CLS feature, EHR embedding width E)
FUSIONS: dict[str, type[Fusion]] = {
    NO_FUSION: NoFusion,
    "concat_anchor": ConcatFusion,
    "concat_both": ConcatBothFusion,
    "token": TokenFusion,
    "film": FiLMFusion,
}


def takes_ehr(name: str) -> bool:
    """Whether fusion ``name`` reads the EHR row (an unknown name is an error listing the known ones)."""
    if name not in FUSIONS:
        raise ConfigError(unknown_name("ehr.fusion", name, FUSIONS))
    return FUSIONS[name].takes_ehr


def build_fusion(name: str, dim: int, ehr_width: int, embed_dim: int,
                 hidden: int = 0) -> tuple[EHREmbed | None, Fusion]:
    """(EHR encoder, fusion) for strategy ``name``; ``none`` needs no EHR encoder.

    dim: CLS width d; ehr_width: columns of the EHR row; embed_dim/hidden: EHRConfig.embed_dim/hidden.
    """
    if name not in FUSIONS:
        raise ConfigError(unknown_name("ehr.fusion", name, FUSIONS))
    fusion = FUSIONS[name](dim, embed_dim)
    if not fusion.takes_ehr:
        return None, fusion
    if ehr_width < 1:
        raise ConfigError(f"ehr.features: fusion {name!r} needs at least one EHR column, "
                          f"got width {ehr_width}")
    return EHREmbed(ehr_width, embed_dim, hidden), fusion


__all__ = [
    "FUSIONS",
    "NO_FUSION",
    "ConcatBothFusion",
    "ConcatFusion",
    "EHREmbed",
    "FiLMFusion",
    "Fusion",
    "NoFusion",
    "TokenFusion",
    "build_fusion",
    "takes_ehr",
]
