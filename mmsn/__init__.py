"""mmsn: multimodal Masked Siamese Networks - which EHR data, fused how, helps CXR representations.

The science lives here (data, EHR encoding, models, losses, probe). This package never imports
ray or optuna, so it can be used alone in a notebook; Ray code lives in ``trainables/``.
"""

__version__ = "0.1.0"
