"""A benchmark = one dataset config of ``segmentation/configs/_base_/datasets`` plus command-line overrides."""
import copy
import os.path as osp

from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS
from omegaconf import OmegaConf

from datasets.templates import template_set_problem
from utils.config import ConfigError, parse_opts

from ..datasets import SegDataError, check_dataset_cfg, check_samples
from .training_free import apply_training_free_protocol

DEFAULT_TEMPLATE = 'simple'


def _flatten(tree, prefix=''):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f'{prefix}{key}.')
        else:
            yield f'{prefix}{key}', value


def _has_key(cfg, dotted):
    node = cfg
    for part in dotted.split('.'):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def load_benchmark(path, opts=(), template=None):
    """Read a benchmark config; `opts` override its keys (unknown keys are an error); `template` is the
    template set used when the config does not fix one (GroupViT presets take it from evaluate.seg.template)."""
    if not osp.isfile(path):
        raise SegDataError(f'segmentation config not found: {path}')
    cfg = Config.fromfile(path)
    try:
        overrides = OmegaConf.to_container(parse_opts(opts, source='evaluate.seg.opts'))
    except ConfigError as e:
        raise SegDataError(str(e)) from None
    known = cfg.to_dict()
    for key, _ in _flatten(overrides):
        if not _has_key(known, key) and not key.startswith('prompt_names.'):
            raise SegDataError(f"evaluate.seg.opts: unknown key '{key}' for {path}")
    cfg.merge_from_dict(overrides)
    if cfg.test_cfg.get('template') is None:
        cfg.test_cfg.template = template or DEFAULT_TEMPLATE
    problem = template_set_problem(cfg.test_cfg.template, f'{path}: test_cfg.template')
    if problem:
        raise SegDataError(problem)
    cfg.config_path = path
    apply_training_free_protocol(cfg)
    cfg.overrides = [str(o) for o in opts or []]
    return cfg


def select_split(bench, split):
    """Evaluate on another split file of the same folder ('val' -> ImageSets/Segmentation/val.txt, 'tune', ...);
    a folder-listed set (no split file) only has its validation images, 'val'. Returns a changed copy."""
    current = bench.dataset.get('ann_file')
    if split is None or (osp.splitext(osp.basename(current))[0] if current else 'val') == split:
        return bench
    if not current:
        raise SegDataError(f'{bench.config_path}: {bench.dataset.type} lists a folder, it has no split {split!r}')
    bench = copy.deepcopy(bench)
    bench.dataset.ann_file = osp.join(osp.dirname(current), f'{split}.txt')
    return bench


def dataset_cfg(bench):
    """The mmseg dataset dict with data_root and the test pipeline filled in."""
    return dict(bench.dataset, data_root=bench.data_root, pipeline=bench.test_pipeline, test_mode=True,
                serialize_data=False)


def build_benchmark_dataset(bench):
    """Check the files, then build the mmseg dataset; raises SegDataError naming the first missing path."""
    cfg = dataset_cfg(bench)
    check_dataset_cfg(cfg)
    init_default_scope('mmseg')
    dataset = DATASETS.build(cfg)
    check_samples(dataset)
    return dataset


def class_names(dataset):
    """-> (names of the output classes, with_bg): background is output 0 when the first class is 'background'."""
    classes = tuple(dataset.metainfo['classes'])
    return classes, classes[0] == 'background'


def prompt_names(bench, classes, with_bg):
    """Text that stands for each foreground class in the prompts."""
    rename = dict(bench.get('prompt_names', {}))
    return [rename.get(name, name) for name in (classes[1:] if with_bg else classes)]


def describe(bench, dataset):
    """The protocol as a flat dict (printed with and stored next to every result)."""
    classes, with_bg = class_names(dataset)
    info = dict(protocol=bench.protocol, paper=bench.paper, config=bench.config_path, dataset=bench.dataset.type,
                data_root=bench.data_root, split=bench.dataset.get('ann_file'), num_images=len(dataset))
    return {**info, **describe_protocol(bench, len(classes), with_bg)}


def describe_protocol(bench, num_classes, with_bg):
    """What the protocol does to an image (resize, windows, templates, background rule, PAMR, a training-free
    method's rule) as a flat dict: `describe` without the dataset (the demo prints it for its own images)."""
    t = bench.test_cfg
    scale = next((p.get('scale') for p in bench.test_pipeline if p['type'] == 'Resize'), None)
    info = dict(
        protocol=bench.protocol, paper=bench.paper, config=bench.config_path, num_classes=num_classes,
        with_bg=with_bg, template=t.template, resize=list(scale) if scale else None,
        mode=t.mode, bg_rule=t.bg_rule if with_bg else None, bg_thresh=t.bg_thresh if with_bg else None,
        pamr=bool(t.pamr), top_k=t.top_k)
    if t.mode == 'slide':
        info.update(crop_size=list(t.crop_size), stride=list(t.stride))
    if t.get('precision', 'float32') != 'float32':
        info['precision'] = t.precision
    if t.pamr:
        info.update(pamr_iters=t.pamr_iters, pamr_dilations=list(t.pamr_dilations),
                    pamr_downsample=t.pamr_downsample)
    renamed = dict(bench.get('prompt_names', {}))
    if renamed:
        info['prompt_names'] = renamed
    if bench.get('overrides'):
        info['overrides'] = list(bench.overrides)
    if t.get('training_free'):
        info.update(training_free=dict(t.training_free))
    return info


def format_protocol(info):
    keys = ('protocol', 'dataset', 'split', 'num_images', 'num_classes', 'template', 'resize', 'mode', 'crop_size',
            'stride', 'bg_rule', 'bg_thresh', 'pamr', 'pamr_iters', 'pamr_dilations', 'top_k', 'precision',
            'prompt_names', 'training_free', 'overrides')
    return ' | '.join(f'{k}={info[k]}' for k in keys if k in info and info[k] is not None)
