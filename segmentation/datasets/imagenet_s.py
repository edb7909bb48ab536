"""ImageNet-S (LUSSeg/ImageNet-S) in its three versions, with the class prompts of PGSeg.

Layout of the release (``<data_root>`` = ``.../ImageNetS919``, ``ImageNetS300`` or ``ImageNetS50``)::

    validation/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG
    validation-segmentation/<wnid>/ILSVRC2012_val_XXXXXXXX.png   RGB, class id = R + 256 * G
    test/<wnid>/*.JPEG                                            masks held by the online server, not released

Label ids: 0 = "other" (PGSeg's background), k = the k-th wnid of the version's sorted category list, 1000 =
ignored. The ids are the version's own: ImageNet-S50 masks use 1..50.
"""
import json
import os.path as osp
from functools import lru_cache

from mmseg.registry import DATASETS

from .errors import SegDataError
from .label_ids import WideLabelDataset

IMAGENET_S_VERSIONS = (50, 300, 919)
IMAGENET_S_IGNORE = 1000
CLASS_LISTS = osp.join(osp.dirname(osp.abspath(__file__)), 'class_lists')


@lru_cache(maxsize=None)
def _class_lists():
    with open(osp.join(CLASS_LISTS, 'imagenet_s.json')) as f:
        return json.load(f)


def imagenet_s_wnids(version):
    """-> the version's wnids in class-id order (class id k is entry k - 1)."""
    if version not in IMAGENET_S_VERSIONS:
        raise SegDataError(f'ImageNet-S version must be one of {IMAGENET_S_VERSIONS}, got {version!r}')
    return tuple(_class_lists()['wnids'][str(version)])


def imagenet_s_classes(version):
    """-> ('background', *PGSeg's prompt of each class of the version) in class-id order. PGSeg prompts the 919
    names of its ImageNet-S dataset verbatim (underscores included); S50 and S300 take the same names by wnid."""
    lists = _class_lists()
    name_of = dict(zip(lists['wnids']['919'], lists['pgseg_names']))
    return ('background', *(name_of[wnid] for wnid in imagenet_s_wnids(version)))


class ImageNetSDataset(WideLabelDataset):
    """ImageNet-S validation images of one version + background ("other", id 0); the registered subclasses
    ImageNetS50Dataset, ImageNetS300Dataset and ImageNetS919Dataset fix the version (and so METAINFO's classes,
    which the demo reads without data).

    The images are listed from ``data_prefix.img_path`` (all ``*.JPEG`` below it, sorted) unless ``ann_file``
    names a list: one ``<wnid>/<name>`` a line, or LUSSeg's ``<wnid>/<name>.JPEG <wnid>/<name>.png`` lines
    (``data/names/ImageNetS_im919_validation.txt``).
    """
    METAINFO = dict()
    LABEL_ENCODING = 'rgb'

    def __init__(self, img_suffix='.JPEG', seg_map_suffix='.png', ignore_index=IMAGENET_S_IGNORE, **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, ignore_index=ignore_index, **kwargs)

    def load_data_list(self):
        if not self.ann_file or not osp.isfile(self.ann_file):
            return super().load_data_list()
        img_dir, ann_dir = self.data_prefix.get('img_path'), self.data_prefix.get('seg_map_path')
        data_list = []
        with open(self.ann_file) as f:
            for number, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) > 2:
                    raise SegDataError(f'{self.ann_file}:{number}: expected "<wnid>/<name>" or "<image> <mask>"')
                image = fields[0] if len(fields) == 2 else fields[0] + self.img_suffix
                mask = fields[1] if len(fields) == 2 else fields[0] + self.seg_map_suffix
                info = dict(img_path=osp.join(img_dir, image), label_map=self.label_map,
                            reduce_zero_label=self.reduce_zero_label, seg_fields=[],
                            num_classes=len(self.metainfo['classes']), ignore_index=self.ignore_index)
                if ann_dir is not None:
                    info['seg_map_path'] = osp.join(ann_dir, mask)
                data_list.append(info)
        return data_list


@DATASETS.register_module()
class ImageNetS50Dataset(ImageNetSDataset):
    """ImageNet-S50: 752 validation images, background + 50 classes (ids 1..50 in its masks)."""
    METAINFO = dict(classes=imagenet_s_classes(50))


@DATASETS.register_module()
class ImageNetS300Dataset(ImageNetSDataset):
    """ImageNet-S300: 4,097 validation images, background + 300 classes."""
    METAINFO = dict(classes=imagenet_s_classes(300))


@DATASETS.register_module()
class ImageNetS919Dataset(ImageNetSDataset):
    """ImageNet-S919 (the full ImageNet-S): 12,419 validation images, background + 919 classes."""
    METAINFO = dict(classes=imagenet_s_classes(919))
