"""Update -> Update transforms (compression, clipping, privacy noise, masking)."""

from fedge.transforms.compression import COMPRESSORS
from fedge.transforms.pipeline import LINKS, TRANSFORMS, ClientPipeline, Transform, make_transform
from fedge.transforms.privacy import LocalGaussian

__all__ = [
    "COMPRESSORS",
    "LINKS",
    "TRANSFORMS",
    "ClientPipeline",
    "LocalGaussian",
    "Transform",
    "make_transform",
]
