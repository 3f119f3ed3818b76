"""Models: timm ViT backbones with token masking, EHR fusion strategies, heads (mmsn.objectives composes them).

Importing this package registers ``vit_nano`` and ``vit_micro`` with timm.
"""

from mmsn.models.backbone import BACKBONES, ViTEncoder, create_vit, n_keep_tokens, random_token_mask
from mmsn.models.fusion import FUSIONS, EHREmbed, Fusion, build_fusion
from mmsn.models.heads import ProjectionHead, init_prototypes

__all__ = ["BACKBONES", "FUSIONS", "EHREmbed", "Fusion", "ProjectionHead", "ViTEncoder",
           "build_fusion", "create_vit", "init_prototypes", "n_keep_tokens", "random_token_mask"]
