"""Zero-shot segmentation of single images for the demo and the web app.

Uses the benchmark code of `segmentation/` unchanged: a protocol preset (segmentation/configs/_base_/datasets/*.py)
gives the resize, the sliding window, the template set, the background rule and threshold, and the class names;
`ZeroShotSegmentor` (or its compact form for many classes) runs the method per crop and the sliding window.
"""
import glob
import os
import os.path as osp
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

import segmentation  # noqa: F401  (makes mmcv.ops importable before mmseg)
from segmentation.datasets import SegDataError, read_toy_classes
from datasets.templates import get_templates
from segmentation.evaluation import load_benchmark, prompt_names
from segmentation.evaluation.compact import build_zero_shot_segmentor, labels_at_size
from utils.zero_shot import class_embeddings

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRESET_DIR = osp.join(ROOT, 'segmentation', 'configs', '_base_', 'datasets')
# short names of the presets (every file stem in PRESET_DIR is a name too)
ALIASES = {'voc': 'pascal_voc12', 'context': 'pascal_context', 'coco': 'coco', 'ade': 'tcl_ade20k',
           'cityscapes': 'tcl_cityscapes', 'coco_stuff': 'tcl_coco_stuff', 'context59': 'tcl_context59',
           'voc20': 'tcl_voc20', 'toy': 'toy'}
# at most this many times the crop area is encoded at once for the group maps (the image is downscaled past it)
GROUP_MAP_CROPS = 4


class DemoError(Exception):
    """Bad demo input (image, vocabulary, preset, checkpoint); the message names it."""


def preset_names() -> List[str]:
    """Every accepted --dataset value: the aliases and every preset file stem."""
    stems = sorted(osp.splitext(osp.basename(p))[0] for p in glob.glob(osp.join(PRESET_DIR, '*.py')))
    return sorted(set(ALIASES) | set(stems))


def preset_path(name: str) -> str:
    path = osp.join(PRESET_DIR, ALIASES.get(name, name) + '.py')
    if not osp.isfile(path):
        raise DemoError(f"unknown dataset preset '{name}'; choose one of {', '.join(preset_names())}")
    return path


def parse_vocab(text: str) -> List[str]:
    """'dog, grass, sky' (commas or new lines) or the path of a text file with one name a line -> names.
    Blank entries are dropped; duplicates are an error (two outputs could not be told apart)."""
    if osp.isfile(text):
        with open(text, encoding='utf-8') as f:
            text = f.read()
    names = [n.strip() for chunk in text.splitlines() for n in chunk.split(',')]
    names = [n for n in names if n]
    if not names:
        raise DemoError('the vocabulary is empty: give class names like "dog, grass, sky" or a file with one a line')
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DemoError(f'the vocabulary names {", ".join(dupes)} more than once')
    return names


@dataclass
class Vocabulary:
    """names: outputs (with 'background' first when with_bg); prompts: text of each foreground class."""
    names: List[str]
    prompts: List[str]
    with_bg: bool


def preset_vocabulary(bench) -> Vocabulary:
    """Class names of a preset from its dataset class (no data needed); the toy world's from classes.json."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    dataset_type = bench.dataset.type
    classes = DATASETS.get(dataset_type).METAINFO.get('classes')
    if dataset_type == 'ToySegDataset':
        classes = _toy_classes(bench)
    names = list(classes)
    with_bg = names[0] == 'background'
    return Vocabulary(names, prompt_names(bench, tuple(names), with_bg), with_bg)


def _toy_classes(bench):
    path = osp.normpath(osp.join(bench.data_root, bench.dataset.get('classes_file', '../classes.json')))
    if osp.isfile(path):
        classes, _palette = read_toy_classes(path)
        return classes
    from tools.toy_world import CLASSES
    return ('background', *CLASSES)


def free_vocabulary(names: Sequence[str], with_bg: bool) -> Vocabulary:
    return Vocabulary((['background'] if with_bg else []) + list(names), list(names), with_bg)


@dataclass
class Prediction:
    """One image. labels: [H, W] output index; groups: per grouping stage [H, W] arg-max group (first .. final);
    group_names: final group -> 'class score' for groups that own pixels."""
    labels: np.ndarray
    names: List[str]
    with_bg: bool
    groups: List[np.ndarray] = field(default_factory=list)
    num_groups: List[int] = field(default_factory=list)
    group_names: Dict[int, str] = field(default_factory=dict)


class Segmenter:
    """A model plus a protocol preset; `predict(image, vocabulary, bg_thresh)` segments one RGB image."""

    def __init__(self, model, cfg, preset: str = 'voc', seg_opts: Sequence[str] = (), device='cpu'):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        template = cfg.evaluate.seg.get('template', 'simple') if 'evaluate' in cfg else 'simple'
        try:
            self.bench = load_benchmark(preset_path(preset), list(seg_opts), template=template)
        except SegDataError as e:
            raise DemoError(str(e)) from None
        self.preset = preset
        self._text_cache = {}

    @property
    def default_bg_thresh(self) -> float:
        return float(self.bench.test_cfg.bg_thresh)

    def default_vocabulary(self) -> Vocabulary:
        return preset_vocabulary(self.bench)

    def text_embedding(self, prompts: Sequence[str]) -> torch.Tensor:
        """[N, C] class embeddings with the preset's templates (cached per class list)."""
        key = tuple(prompts)
        if key not in self._text_cache:
            templates = get_templates(self.bench.test_cfg.template)
            self._text_cache = {key: class_embeddings(self.model, list(prompts), templates)}
        return self._text_cache[key]

    def resize(self, image: np.ndarray) -> np.ndarray:
        """The preset's keep-ratio test resize (mmcv bilinear, as the benchmark pipeline)."""
        import mmcv
        step = next((p for p in self.bench.test_pipeline if p['type'] == 'Resize'), None)
        if step is None:
            return image
        return mmcv.imrescale(image, tuple(step['scale']), interpolation='bilinear')

    def to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """[H, W, 3] uint8 RGB -> [1, 3, H, W] normalised by the preset's mean/std (ImageNet's)."""
        pre = self.bench.data_preprocessor
        mean = torch.tensor(pre['mean']).view(1, 3, 1, 1)
        std = torch.tensor(pre['std']).view(1, 3, 1, 1)
        x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
        return ((x - mean) / std).to(self.device)

    @torch.no_grad()
    def predict(self, image: np.ndarray, vocab: Vocabulary, bg_thresh: Optional[float] = None,
                with_groups: bool = True) -> Prediction:
        """image: [H, W, 3] uint8 RGB -> Prediction at the image's size."""
        text = self.text_embedding(vocab.prompts)
        test_cfg = dict(self.bench.test_cfg)
        test_cfg['bg_thresh'] = self.default_bg_thresh if bg_thresh is None else float(bg_thresh)
        segmentor = build_zero_shot_segmentor(self.model, text, vocab.with_bg, test_cfg).eval()
        inputs = self.to_tensor(self.resize(image))
        meta = dict(ori_shape=image.shape[:2], img_shape=tuple(inputs.shape[-2:]), pad_shape=tuple(inputs.shape[-2:]))
        labels = labels_at_size(segmentor.inference(inputs, [meta]), image.shape[:2])[0].cpu().numpy()
        pred = Prediction(labels, list(vocab.names), vocab.with_bg)
        if with_groups:
            self._add_groups(pred, inputs, image.shape[:2], text, vocab, test_cfg)
        return pred

    def _group_input(self, inputs: torch.Tensor) -> torch.Tensor:
        """The resized image, further downscaled when larger than GROUP_MAP_CROPS crops (bounded memory)."""
        crop_h, crop_w = self.bench.test_cfg.crop_size
        h, w = inputs.shape[-2:]
        factor = (GROUP_MAP_CROPS * crop_h * crop_w / (h * w)) ** 0.5
        patch = self.model.patch_size
        if factor >= 1:
            size = (h, w)
        else:
            size = (int(h * factor), int(w * factor))
        size = tuple(max(patch, s // patch * patch) for s in size)
        if size == (h, w):
            return inputs
        return torch.nn.functional.interpolate(inputs, size=size, mode='bilinear', align_corners=False)

    def _add_groups(self, pred: Prediction, inputs, size, text, vocab: Vocabulary, test_cfg) -> None:
        """Group maps of every grouping stage and the best class of each final group (methods with groups)."""
        view = self.model.group_view(self._group_input(inputs), text, bg_thresh=test_cfg['bg_thresh'],
                                     top_k=test_cfg.get('top_k', 5), bg_rule=test_cfg.get('bg_rule', 'groupvit'))
        if view is None:
            return
        for maps in view.maps:
            maps = torch.nn.functional.interpolate(maps.permute(2, 0, 1)[None], size=size, mode='bilinear',
                                                   align_corners=False)
            pred.groups.append(maps[0].argmax(dim=0).cpu().numpy())
            pred.num_groups.append(maps.shape[1])
        score, best = view.affinity.max(dim=-1)
        for g in np.unique(pred.groups[-1]).tolist():
            text = f'{vocab.names[int(vocab.with_bg) + int(best[g])]} {float(score[g]):.2f}'
            background = vocab.with_bg and float(score[g]) < view.background_threshold
            pred.group_names[g] = f'background ({text})' if background else text


def load_model(cfg, resume: Optional[str], seed: int = 0):
    """Build cfg.model and load `resume`; without it, seeded random weights and ONE warning saying so."""
    from utils.checkpoint import CheckpointError, build_and_load
    torch.manual_seed(seed)
    try:
        model = build_and_load(cfg.model, resume or None)
    except (CheckpointError, OSError) as e:
        raise DemoError(str(e)) from None
    if not resume:
        warnings.warn('no checkpoint given (--resume): the model has RANDOM weights, its segmentations mean nothing',
                      stacklevel=2)
    return model.eval()


def read_image(path: str) -> np.ndarray:
    """-> [H, W, 3] uint8 RGB (EXIF orientation applied); DemoError naming the file when it cannot be read."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert('RGB'))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DemoError(f'cannot read image {path}: {str(e).splitlines()[0] or type(e).__name__}') from None


IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp')


def list_inputs(spec: str) -> List[str]:
    """An image file, a folder (its images, sorted) or a glob pattern -> image paths; DemoError when none."""
    if osp.isdir(spec):
        paths = sorted(osp.join(spec, n) for n in os.listdir(spec) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not paths:
            raise DemoError(f'folder {spec} has no images ({", ".join(IMAGE_EXTENSIONS)})')
        return paths
    if osp.isfile(spec):
        return [spec]
    if glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if osp.isfile(p))
        if not paths:
            raise DemoError(f'no file matches {spec}')
        return paths
    raise DemoError(f'input not found: {spec}')
