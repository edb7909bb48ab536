"""Zero-shot semantic segmentation evaluation on mmsegmentation 1.x.

Importing this package first makes ``mmcv.ops`` importable on mmcv-lite (see :mod:`.mmcv_compat`).
"""
from .mmcv_compat import install as _install_mmcv_compat

_install_mmcv_compat()
