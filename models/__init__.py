from .builder import MODELS, build_model
from .contrastive import MultiLabelContrastive
from .group_vit import GroupViT
from .pgseg import PGSeg
from .text_transformer import TextTransformer

__all__ = ['MODELS', 'build_model', 'MultiLabelContrastive', 'GroupViT', 'PGSeg', 'TextTransformer']
