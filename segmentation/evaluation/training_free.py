"""The full-image rule of the training-free CLIP methods (MaskCLIP, SCLIP, ClearCLIP, NACLIP) and their published
protocols.

Per image, at the ORIGINAL size (never per crop), as the published segmentors do:
1. logits: sliding windows over the image resized to short side S (each window's cosine map from the method's
   `zero_shot_logits`, summed, divided by the overlap count) or the whole image at once; resized bilinearly
   (align_corners False) to the original size;
2. PAMR there, with the image resized to it, when `pamr_steps` > 0;
3. probabilities softmax(logit_scale * logits) over the query names; a class with several names takes the max of
   their probabilities;
4. SCLIP's `area_thd`: a foreground class whose arg-max area is at most area_thd x the total foreground arg-max
   area gets probability 0;
5. pred = arg-max; pixels whose best probability is below `prob_thd` become class 0.
"""
import os.path as osp
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import yaml
from mmengine.structures import PixelData
from mmseg.models.segmentors.base import BaseSegmentor

from models.pamr import PAMR

from ..datasets import SegDataError
from .segmentor import slide_windows

CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs')
PROTOCOL_FILE = osp.join(CONFIG_DIR, 'training_free_protocols.yml')
CLASS_NAME_DIR = osp.join(CONFIG_DIR, 'class_names')
TRAINING_FREE_BENCHMARKS = ('voc21', 'context60', 'coco_object', 'voc20', 'city_scapes', 'context59', 'ade20k',
                            'coco_stuff164k')
PROTOCOL_KEYS = ('short_side', 'slide_crop', 'slide_stride', 'logit_scale', 'prob_thd', 'area_thd', 'pamr_steps',
                 'pamr_stride')


@lru_cache()
def _protocol_tables() -> dict:
    with open(PROTOCOL_FILE) as f:
        return yaml.safe_load(f)


def read_class_names(path: str, separator: str) -> Tuple[List[str], List[int]]:
    """A class-name file (one class a line, several names split on `separator`) -> (names, query_idx):
    query_idx[q] is the line (class) of name q. Names are kept as written, as the published `get_cls_idx`."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'class-name file not found: {path}')
    with open(path) as f:
        lines = f.readlines()
    names, query_idx = [], []
    for index, line in enumerate(lines):
        line_names = [name.replace('\n', '') for name in line.split(separator)]
        names += line_names
        query_idx += [index] * len(line_names)
    if not names:
        raise ValueError(f'class-name file {path} is empty')
    return names, query_idx


def training_free_protocol(method: str, benchmark: str) -> Dict:
    """method: 'maskclip' | 'sclip' | 'clearclip' | 'naclip'; benchmark: one of TRAINING_FREE_BENCHMARKS ->
    {short_side, slide_crop (None: whole image), slide_stride, logit_scale, prob_thd, area_thd (None: off),
    pamr_steps, pamr_stride (None: no PAMR in that code), names, query_idx, templates} as that method's repository
    evaluates `benchmark`."""
    from datasets import get_templates
    tables = _protocol_tables()
    if method not in tables:
        raise ValueError(f"unknown training-free method {method!r}; choose one of {', '.join(sorted(tables))}")
    table = tables[method]
    while 'same_as' in table:
        table = tables[table['same_as']]
    if benchmark not in table['benchmarks']:
        raise ValueError(f"unknown benchmark {benchmark!r} for {method}; choose one of "
                         f"{', '.join(table['benchmarks'])}")
    entry = {**table['defaults'], **table['benchmarks'][benchmark]}
    names, query_idx = read_class_names(osp.join(CLASS_NAME_DIR, entry['class_names'], entry['names']),
                                        entry['name_separator'])
    protocol = {key: entry.get(key) for key in PROTOCOL_KEYS}
    protocol['slide_crop'] = protocol['slide_crop'] or None
    if protocol['pamr_stride'] is not None:
        protocol['pamr_stride'] = tuple(protocol['pamr_stride'])
    protocol.update(names=names, query_idx=query_idx, templates=get_templates('full'))
    return protocol


def class_probabilities(logits: torch.Tensor, query_idx: Sequence[int], logit_scale: float) -> torch.Tensor:
    """logits: [Q, H, W] cosine maps of the query names -> [K, H, W]: softmax(logit_scale * logits) over the names,
    each class the max of its names' probabilities (K = max(query_idx) + 1)."""
    probs = (logits * logit_scale).softmax(0)
    query_idx = torch.as_tensor(query_idx, dtype=torch.long, device=logits.device)
    if query_idx.numel() != logits.shape[0]:
        raise ValueError(f'query_idx has {query_idx.numel()} entries for {logits.shape[0]} query names')
    num_classes = int(query_idx.max()) + 1
    # as published: names are taken as the classes whenever there are as many names as classes
    if num_classes == logits.shape[0]:
        return probs
    classes = probs.new_zeros((num_classes, *probs.shape[1:]))
    index = query_idx.view(-1, *([1] * (probs.dim() - 1))).expand_as(probs)
    return classes.scatter_reduce_(0, index, probs, 'amax', include_self=True)


def training_free_postprocess(model, logits: torch.Tensor, query_idx: Sequence[int], logit_scale: float,
                              prob_thd: float, area_thd: Optional[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """model: the method (its `renormalise_scores`); logits: [Q, H, W] (or [1, Q, H, W]) at the original size ->
    (scores [K, H, W] class probabilities, pred [H, W] int64), steps 3-5 of the module docstring."""
    if logits.dim() == 4:
        if logits.shape[0] != 1:
            raise ValueError(f'logits of one image expected, got a batch of {logits.shape[0]}')
        logits = logits[0]
    scores = class_probabilities(logits, query_idx, logit_scale)
    num_classes = scores.shape[0]
    if area_thd is not None:
        area = F.one_hot(scores.argmax(0), num_classes)[:, :, 1:].sum((0, 1))  # foreground arg-max areas (int64)
        scores[1:] *= (area > area_thd * area.sum()).to(scores.dtype)[:, None, None]
    pred = scores.argmax(0)
    pred[scores.max(0).values < prob_thd] = 0
    if getattr(model, 'renormalise_scores', False):
        scores /= scores.sum(0, keepdim=True)
    return scores, pred


def slide_logits(model, img: torch.Tensor, text_embedding: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """img: [1, 3, h, w] -> [1, Q, h, w]: the windows' `zero_shot_logits` summed and divided by the overlap count
    (mmseg's windows; a window is smaller than `crop` only where the image is)."""
    h, w = img.shape[-2:]
    sums, count = None, img.new_zeros((1, 1, h, w))
    for y1, y2, x1, x2 in slide_windows(h, w, (crop, crop), (stride, stride)):
        window = model.zero_shot_logits(img[:, :, y1:y2, x1:x2], text_embedding, with_bg=False, bg_thresh=0.0)
        if sums is None:
            sums = img.new_zeros((1, window.shape[1], h, w))
        sums[:, :, y1:y2, x1:x2] += window
        count[:, :, y1:y2, x1:x2] += 1
    return sums / count


def whole_image_logits(model, img: torch.Tensor, text_embedding: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """img: [1, 3, h, w] -> [1, Q, *size]: the patch grid's cosine maps resized to `size`, directly or (NACLIP) first
    to the input size."""
    if getattr(model, 'whole_image_via_input_size', False):
        logits = model.zero_shot_logits(img, text_embedding, with_bg=False, bg_thresh=0.0)
    else:
        logits = model.patch_logits(img, text_embedding)
    return F.interpolate(logits, size=size, mode='bilinear', align_corners=False)


@torch.no_grad()
def training_free_predict(model, img: torch.Tensor, text_embedding: torch.Tensor, query_idx: Sequence[int],
                          ori_shape: Tuple[int, int], slide_crop: Optional[int], slide_stride: Optional[int],
                          logit_scale: float, prob_thd: float, area_thd: Optional[float], pamr_steps: int,
                          pamr_stride: Optional[Sequence[int]]) -> Dict[str, torch.Tensor]:
    """One image. img: [1, 3, h, w] normalised at the protocol's short side; text_embedding: [Q, D] unit rows (one
    per query name); ori_shape: (H, W) of the original image; slide_crop None = the whole image at once ->
    {'logits': [Q, H, W] cosine maps, 'scores': [K, H, W] probabilities, 'pred': [H, W] class indices}."""
    if img.dim() != 4 or img.shape[0] != 1:
        raise ValueError(f'one image [1, 3, h, w] expected, got {tuple(img.shape)}')
    ori_shape = tuple(int(s) for s in ori_shape[:2])
    if slide_crop:
        logits = F.interpolate(slide_logits(model, img, text_embedding, slide_crop, slide_stride), size=ori_shape,
                               mode='bilinear', align_corners=False)
    else:
        logits = whole_image_logits(model, img, text_embedding, ori_shape)
    if pamr_steps:
        image = F.interpolate(img, size=ori_shape, mode='bilinear', align_corners=False)
        logits = PAMR(pamr_steps, tuple(pamr_stride)).to(image.device)(image, logits.to(image.dtype))
    scores, pred = training_free_postprocess(model, logits[0], query_idx, logit_scale, prob_thd, area_thd)
    return {'logits': logits[0], 'scores': scores, 'pred': pred}


def apply_training_free_protocol(bench) -> None:
    """A benchmark config whose test_cfg has `training_free` (dict(method, benchmark, + any protocol key)): fill in
    the protocol, in place, after the overrides are merged: the table's entry for (method, benchmark) under the keys
    the config sets itself; the Resize of the test pipeline to short side `short_side`; and the generic test_cfg
    fields the report prints (mode, crop_size, stride, pamr, ...)."""
    settings = bench.test_cfg.get('training_free')
    if settings is None:
        return
    settings = dict(settings)
    if settings.get('benchmark'):
        if not settings.get('method'):
            raise SegDataError(f"{bench.config_path}: test_cfg.training_free names benchmark "
                             f"{settings['benchmark']!r} but no method (one of {', '.join(_protocol_tables())})")
        table = training_free_protocol(settings['method'], settings['benchmark'])
        settings = {**{k: table[k] for k in PROTOCOL_KEYS}, **{k: v for k, v in settings.items() if v is not None}}
    missing = [k for k in PROTOCOL_KEYS if k not in settings]
    if missing:
        raise SegDataError(f"{bench.config_path}: test_cfg.training_free lacks {', '.join(missing)}")
    settings['slide_crop'] = settings['slide_crop'] or None
    if settings['pamr_stride'] is not None:
        settings['pamr_stride'] = tuple(settings['pamr_stride'])
    bench.test_cfg.training_free = settings
    for step in bench.test_pipeline:
        if step['type'] == 'Resize':
            step.update(scale=(2048, settings['short_side']), keep_ratio=True)
    crop, stride = settings['slide_crop'], settings['slide_stride']
    bench.test_cfg.update(mode='slide' if crop else 'whole', crop_size=(crop, crop) if crop else None,
                          stride=(stride, stride) if crop else None, pamr=bool(settings['pamr_steps']),
                          pamr_iters=settings['pamr_steps'], pamr_dilations=settings['pamr_stride'],
                          pamr_downsample=1, bg_rule='prob_thd', bg_thresh=settings['prob_thd'], top_k=None)


class TrainingFreeSegmentor(BaseSegmentor):
    """mmseg segmentor of the training-free methods: `training_free_predict` per image (the full-image rule at the
    original size). model: a TrainingFreeCLIP; text_embedding: [Q, C] one row per query name; query_idx: the class
    of each name; protocol: the keys of PROTOCOL_KEYS."""

    def __init__(self, model, text_embedding, query_idx, protocol, data_preprocessor=None):
        super().__init__(data_preprocessor=data_preprocessor)
        self.model = model
        self.register_buffer('text_embedding', text_embedding)
        self.query_idx = list(query_idx)
        self.protocol = dict(protocol)
        self.num_classes = self.out_channels = max(self.query_idx) + 1
        self.align_corners = False

    def predict(self, inputs, data_samples=None):
        """inputs: [B, 3, h, w] normalised images at the protocol's short side -> data_samples with pred_sem_seg
        [1, H, W] and seg_logits [K, H, W] (class probabilities) at each image's original size."""
        p = self.protocol
        for i, sample in enumerate(data_samples):
            out = training_free_predict(self.model, inputs[i:i + 1], self.text_embedding, self.query_idx,
                                        sample.metainfo['ori_shape'], p['slide_crop'], p['slide_stride'],
                                        p['logit_scale'], p['prob_thd'], p['area_thd'], p['pamr_steps'],
                                        p['pamr_stride'])
            sample.set_data({'pred_sem_seg': PixelData(data=out['pred'][None]),
                             'seg_logits': PixelData(data=out['scores'])})
        return data_samples

    def encode_decode(self, inputs, batch_img_metas=None):
        """inputs: [B, 3, h, w] crops -> [B, Q, h, w] cosine maps of the query names."""
        return self.model.zero_shot_logits(inputs, self.text_embedding, with_bg=False, bg_thresh=0.0)

    def extract_feat(self, inputs):
        """inputs: [B, 3, h, w] -> [B, h/16 * w/16, C] L2-normalised patch embeddings."""
        return self.model.dense_features(inputs)

    def _forward(self, inputs, data_samples=None):
        return self.encode_decode(inputs)

    def loss(self, inputs, data_samples):
        raise NotImplementedError('training-free methods are not trained')


def training_free_method(model, bench) -> str:
    """The name of the training-free method `model` is ('sclip', ...); ConfigError when it is none, or when the
    training-free benchmark config `bench` is another method's protocol."""
    from models.training_free import TRAINING_FREE_METHODS, TrainingFreeCLIP
    from utils.config import ConfigError
    settings = bench.test_cfg.training_free
    if not isinstance(model, TrainingFreeCLIP):
        raise ConfigError(f'{bench.config_path} is a training-free protocol; {type(model).__name__} is not a '
                          'training-free method')
    method = next(name for name, cls in TRAINING_FREE_METHODS.items() if type(model) is cls)
    if settings.get('method') not in (None, method):
        raise ConfigError(f"{bench.config_path} is {settings['method']}'s protocol, but the model is {method}; "
                          f'choose the {method}_* preset')
    return method


def training_free_queries(bench, classes: Sequence[str]) -> Tuple[List[str], List[int]]:
    """The query names of a training-free benchmark config and the class of each: the table's class-name file for
    its (method, benchmark), or (no benchmark in the config) one name per class of `classes` (the dataset's output
    classes, background included); ConfigError when their class counts differ."""
    from utils.config import ConfigError

    from .benchmark import prompt_names
    settings = bench.test_cfg.training_free
    if settings.get('benchmark'):
        table = training_free_protocol(settings['method'], settings['benchmark'])
        names, query_idx = table['names'], table['query_idx']
    else:
        names, query_idx = prompt_names(bench, tuple(classes), False), list(range(len(classes)))
    if max(query_idx) + 1 != len(classes):
        raise ConfigError(f'{bench.config_path}: {max(query_idx) + 1} classes in the names, {len(classes)} in the '
                          'dataset')
    return names, query_idx


def build_training_free_segmentor(model, dataset, bench) -> TrainingFreeSegmentor:
    """The segmentor of a training-free benchmark config (see apply_training_free_protocol) around `model`: query
    names from the table's class-name file, or (no benchmark in the config) one name per class of the dataset."""
    from datasets.templates import get_templates
    from mmseg.models import SegDataPreProcessor
    from utils.zero_shot import class_embeddings

    from .benchmark import class_names
    training_free_method(model, bench)
    classes, _ = class_names(dataset)
    names, query_idx = training_free_queries(bench, classes)
    device = next(model.parameters()).device
    text = class_embeddings(model, names, get_templates(bench.test_cfg.template))
    preprocessor = SegDataPreProcessor(**{k: v for k, v in bench.data_preprocessor.items() if k != 'type'})
    return TrainingFreeSegmentor(model, text, query_idx, bench.test_cfg.training_free,
                                 data_preprocessor=preprocessor).to(device)
