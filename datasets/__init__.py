from .captions import build_text_transform
from .imagenet import imagenet_classes, val_class_names
from .shards import ShardConfigError, build_train_data, build_val_loader, format_counts, merge_counts
from .superpixels import superpixel_patch_labels  # noqa: F401  (SegCLIP's superpixel labels)
from .templates import TEMPLATE_SETS, get_templates
from .tokenizer import tokenize
from .transforms import build_img_transform

__all__ = [
    'tokenize', 'build_text_transform', 'build_img_transform', 'build_train_data', 'build_val_loader',
    'get_templates', 'TEMPLATE_SETS', 'imagenet_classes', 'val_class_names', 'ShardConfigError', 'format_counts',
    'merge_counts'
]
