"""The self-supervised and supervised objectives, as pure functions (and the parameter-free MSNLoss).

One module per objective family, each tested against a well-kept library in float64:

- ``msn``: MSN (prototype assignment, sharpening, Sinkhorn balancing, me-max); ``MSNLoss``.
- ``vicreg``: VICReg (invariance, variance, covariance terms); ``vicreg_loss``.
- ``dino``: DINO (``dino_loss``, ``update_center``, ``teacher_temperature``).
- ``supcon``: supervised contrastive L_out; ``supcon_loss``.
- ``byol``: BYOL's symmetrised regression loss; ``byol_loss``.
- ``distributed``: the torch.distributed helpers the families share (all-reduce and all-gather
  with gradients); private, imported by the family modules only.

Every public name is re-exported here, so ``from mmsn.losses import MSNLoss`` works.
"""

from mmsn.losses.byol import byol_loss
from mmsn.losses.dino import dino_loss, teacher_temperature, update_center
from mmsn.losses.msn import MSNLoss, MSNLossOutput, mean_entropy_penalty, prototype_logits, sharpen, sinkhorn
from mmsn.losses.supcon import supcon_anchor_losses, supcon_loss, supcon_masks
from mmsn.losses.vicreg import VICRegLossOutput, covariance_term, invariance_term, variance_term, vicreg_loss

__all__ = ["MSNLoss", "MSNLossOutput", "VICRegLossOutput", "byol_loss", "covariance_term", "dino_loss",
           "invariance_term", "mean_entropy_penalty", "prototype_logits", "sharpen", "sinkhorn",
           "supcon_anchor_losses", "supcon_loss", "supcon_masks", "teacher_temperature", "update_center",
           "variance_term", "vicreg_loss"]
