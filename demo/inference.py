"""Zero-shot segmentation of single images for the demo and the web app.

Uses the benchmark code of `segmentation/` unchanged: a protocol preset (segmentation/configs/_base_/datasets/*.py)
gives the resize, the sliding window, the template set, the background rule and threshold, and the class names;
`ZeroShotSegmentor` (or its compact form for many classes) runs the method per crop and the sliding window.
A training-free method (MaskCLIP, SCLIP, ClearCLIP, NACLIP) with one of its presets
(segmentation/configs/_base_/datasets/training_free/<method>_<benchmark>.py) is segmented by `TrainingFreeSegmentor`,
the published full-image rule main_seg.py evaluates it with (query-name files with several names per class, logit
scale, prob_thd, area_thd, PAMR, whole image or windows).
"""
import glob
import os
import os.path as osp
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import segmentation  # noqa: F401  (makes mmcv.ops importable before mmseg)
from segmentation.datasets import SegDataError, read_toy_classes
from datasets.templates import get_templates
from segmentation.evaluation import describe_protocol, format_protocol, load_benchmark, prompt_names
from segmentation.evaluation.compact import build_zero_shot_segmentor, labels_at_size
from utils.zero_shot import class_embeddings

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRESET_DIR = osp.join(ROOT, 'segmentation', 'configs', '_base_', 'datasets')
# short names of the presets (every file stem in PRESET_DIR is a name too)
ALIASES = {'voc': 'pascal_voc12', 'context': 'pascal_context', 'coco': 'coco', 'ade': 'tcl_ade20k',
           'cityscapes': 'tcl_cityscapes', 'coco_stuff': 'tcl_coco_stuff', 'context59': 'tcl_context59',
           'voc20': 'tcl_voc20', 'toy': 'toy'}
TRAINING_FREE_PRESET_DIR = osp.join(PRESET_DIR, 'training_free')
# a training-free method's benchmark under the short names of the generic presets (--method sclip --dataset voc)
TRAINING_FREE_ALIASES = {'voc': 'voc21', 'context': 'context60', 'coco': 'coco_object', 'ade': 'ade20k',
                         'cityscapes': 'city_scapes', 'coco_stuff': 'coco_stuff164k'}
# at most this many times the crop area is encoded at once for the group maps (the image is downscaled past it)
GROUP_MAP_CROPS = 4


class DemoError(Exception):
    """Bad demo input (image, vocabulary, preset, checkpoint); the message names it."""


def preset_names() -> List[str]:
    """The generic presets (any method): the aliases and every preset file stem."""
    stems = sorted(osp.splitext(osp.basename(p))[0] for p in glob.glob(osp.join(PRESET_DIR, '*.py')))
    return sorted(set(ALIASES) | set(stems))


def training_free_preset_names() -> List[str]:
    """The training-free presets: '<method>_<benchmark>' (that method's published protocol), and the names a
    training-free model resolves to its own preset: the benchmarks, their aliases, 'toy'."""
    from segmentation.evaluation.training_free import TRAINING_FREE_BENCHMARKS
    stems = [osp.splitext(osp.basename(p))[0] for p in glob.glob(osp.join(TRAINING_FREE_PRESET_DIR, '*.py'))]
    return sorted(set(stems) | set(TRAINING_FREE_BENCHMARKS) | set(TRAINING_FREE_ALIASES))


def all_preset_names() -> List[str]:
    """Every accepted --dataset value."""
    return sorted(set(preset_names()) | set(training_free_preset_names()))


def _training_free_preset(stem: str) -> Optional[str]:
    """'<method>_<benchmark>' or 'toy' -> the training-free preset file, if there is one."""
    from models.training_free import TRAINING_FREE_METHODS
    path = osp.join(TRAINING_FREE_PRESET_DIR, stem + '.py')
    return path if (stem.split('_')[0] in TRAINING_FREE_METHODS or stem == 'toy') and osp.isfile(path) else None


def preset_path(name: str, method: Optional[str] = None) -> str:
    """A --dataset value -> its preset file. method: the training-free method of the model ('sclip', ...) or None;
    with one, a benchmark name ('voc21', its alias 'voc', 'toy') is that method's preset, as its repository evaluates
    it. '<method>_<benchmark>' names one method's preset whatever the model (the segmentor refuses another's)."""
    if method is not None:
        path = _training_free_preset(f'{method}_{TRAINING_FREE_ALIASES.get(name, name)}') or (
            _training_free_preset(name) if name == 'toy' else None)
        if path:
            return path
    path = _training_free_preset(name) if name != 'toy' else None
    if path:
        return path
    path = osp.join(PRESET_DIR, ALIASES.get(name, name) + '.py')
    if not osp.isfile(path):
        raise DemoError(f"unknown dataset preset '{name}'; choose one of "
                        f"{', '.join(preset_names() if method is None else all_preset_names())}")
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
    """names: outputs (with 'background' first when with_bg); prompts: text of each foreground class.
    queries, query_idx: a training-free preset's query names (several per class in its class-name file) and the output
    of each; None: one query per output, its name (free names)."""
    names: List[str]
    prompts: List[str]
    with_bg: bool
    queries: Optional[List[str]] = None
    query_idx: Optional[List[int]] = None

    def training_free_queries(self) -> Tuple[List[str], List[int]]:
        """-> (query names, output of each) for the training-free rule: the preset's, else one per output name
        ('background' included: the published rule scores background as a class)."""
        if self.queries is not None:
            return list(self.queries), list(self.query_idx)
        return list(self.names), list(range(len(self.names)))


def preset_vocabulary(bench) -> Vocabulary:
    """Class names of a preset from its dataset class (no data needed); the toy world's from classes.json; a
    training-free preset's query names and their classes from its class-name file."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    dataset_type = bench.dataset.type
    classes = DATASETS.get(dataset_type).METAINFO.get('classes')
    if dataset_type == 'ToySegDataset':
        classes = _toy_classes(bench)
    names = list(classes)
    with_bg = names[0] == 'background'
    vocab = Vocabulary(names, prompt_names(bench, tuple(names), with_bg), with_bg)
    if bench.test_cfg.get('training_free'):
        from segmentation.evaluation.training_free import training_free_queries
        from utils.config import ConfigError
        try:
            vocab.queries, vocab.query_idx = training_free_queries(bench, names)
        except ConfigError as e:
            raise DemoError(str(e)) from None
    return vocab


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


def training_free_method_name(model) -> Optional[str]:
    """'maskclip' | 'sclip' | 'clearclip' | 'naclip' for a training-free method, else None."""
    from models.training_free import TRAINING_FREE_METHODS
    return next((name for name, cls in TRAINING_FREE_METHODS.items() if type(model) is cls), None)


class Segmenter:
    """A model plus a protocol preset; `predict(image, vocabulary, bg_thresh)` segments one RGB image. A training-free
    preset runs the published full-image rule (TrainingFreeSegmentor, as main_seg.py); bg_thresh is its prob_thd."""

    def __init__(self, model, cfg, preset: str = 'voc', seg_opts: Sequence[str] = (), device='cpu'):
        from segmentation.evaluation.training_free import training_free_method
        from utils.config import ConfigError
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.method = training_free_method_name(self.model)
        template = cfg.evaluate.seg.get('template', 'simple') if 'evaluate' in cfg else 'simple'
        try:
            self.bench = load_benchmark(preset_path(preset, self.method), list(seg_opts), template=template)
            self.training_free = bool(self.bench.test_cfg.get('training_free'))
            if self.training_free:
                training_free_method(self.model, self.bench)
        except (SegDataError, ConfigError) as e:
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

    def protocol(self, vocab: Vocabulary, bg_thresh: Optional[float] = None) -> str:
        """The protocol line printed with every result, as main_seg.py's (preset, resize, windows, the background
        rule or the training-free method's rule with the threshold used) and where the class names came from."""
        thresh = self.default_bg_thresh if bg_thresh is None else float(bg_thresh)
        info = describe_protocol(self.bench, len(vocab.names), vocab.with_bg)
        if info.get('bg_thresh') is not None:
            info['bg_thresh'] = thresh
        if self.training_free:
            info['training_free'] = {**info['training_free'], 'prob_thd': thresh}
        if vocab.queries is not None:
            source = f'the preset\'s ({len(vocab.queries)} query names for {len(vocab.names)} classes)'
        else:
            source = f'free ({len(vocab.names)} names, one per class)'
        return f'{format_protocol(info)} | vocabulary={source}'

    @torch.no_grad()
    def predict(self, image: np.ndarray, vocab: Vocabulary, bg_thresh: Optional[float] = None,
                with_groups: bool = True) -> Prediction:
        """image: [H, W, 3] uint8 RGB -> Prediction at the image's size."""
        if self.training_free:
            return self._predict_training_free(image, vocab, bg_thresh)
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

    def _predict_training_free(self, image: np.ndarray, vocab: Vocabulary, bg_thresh: Optional[float]) -> Prediction:
        """The published full-image rule of the preset's method through TrainingFreeSegmentor (main_seg.py's
        segmentor); bg_thresh replaces the preset's prob_thd."""
        from mmseg.structures import SegDataSample
        from segmentation.evaluation.training_free import TrainingFreeSegmentor
        queries, query_idx = vocab.training_free_queries()
        settings = dict(self.bench.test_cfg.training_free)
        if bg_thresh is not None:
            settings['prob_thd'] = float(bg_thresh)
        segmentor = TrainingFreeSegmentor(self.model, self.text_embedding(queries), query_idx, settings).eval()
        inputs = self.to_tensor(self.resize(image))
        sample = SegDataSample(metainfo=dict(ori_shape=image.shape[:2], img_shape=tuple(inputs.shape[-2:])))
        labels = segmentor.predict(inputs, [sample])[0].pred_sem_seg.data[0].cpu().numpy()
        return Prediction(labels, list(vocab.names), vocab.with_bg)

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
    if not resume and not _weights_in_config(cfg):
        warnings.warn('no checkpoint given (--resume): the model has RANDOM weights, its segmentations mean nothing',
                      stacklevel=2)
    return model.eval()


def _weights_in_config(cfg) -> bool:
    """A training-free config whose model.clip_model is the path of a CLIP file: its weights are not random."""
    clip_model = cfg.model.get('clip_model')
    return isinstance(clip_model, str) and osp.isfile(clip_model)


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
