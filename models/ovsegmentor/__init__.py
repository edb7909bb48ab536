"""OVSegmentor (Xu et al., CVPR 2023): DINO-initialised grouping ViT, BERT text encoder, masked entity completion
and cross-image mask consistency."""
from .bert import Bert
from .encoder import OVSegmentorGroupViT
from .model import OVSegmentor

__all__ = ['Bert', 'OVSegmentorGroupViT', 'OVSegmentor']
