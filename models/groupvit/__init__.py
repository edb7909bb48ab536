"""GroupViT (Xu et al., CVPR 2022): grouping ViT image encoder, CLIP-style text transformer, contrastive losses."""
from .encoder import GroupViT
from .model import MultiLabelContrastive

__all__ = ['GroupViT', 'MultiLabelContrastive']
