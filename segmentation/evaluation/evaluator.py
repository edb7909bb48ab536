"""Distributed zero-shot segmentation evaluation: mmseg dataset + DefaultSampler + ZeroShotSegmentor + IoU."""
import os.path as osp
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from mmengine.dataset import DefaultSampler, pseudo_collate
from mmengine.structures import PixelData
from mmseg.models import SegDataPreProcessor
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.templates import get_templates
from utils.distributed import backend, get_rank
from utils.zero_shot import class_embeddings

from .benchmark import (build_benchmark_dataset, class_names, describe, load_benchmark, prompt_names,
                        select_split)
from .compact import build_zero_shot_segmentor
from .metric import SegIoUMetric
from .training_free import build_training_free_segmentor
from .vis import save_overlay


def benchmark_from_cfg(cfg, overrides=()):
    """cfg: the run's OmegaConf config -> benchmark of cfg.evaluate.seg (cfg, template, opts) + overrides."""
    seg = cfg.evaluate.seg
    return load_benchmark(seg.cfg, list(seg.get('opts') or []) + list(overrides), seg.get('template'))


def build_segmentor(model, dataset, bench):
    """Text embeddings of the benchmark's classes, wrapped with the test protocol around `model`
    (test_cfg.compact_logits: CompactZeroShotSegmentor, the same labels in less memory)."""
    if bench.test_cfg.get('training_free'):
        return build_training_free_segmentor(model, dataset, bench)
    classes, with_bg = class_names(dataset)
    device = next(model.parameters()).device
    return build_zero_shot_segmentor(model, benchmark_text(model, bench, classes, with_bg), with_bg, bench.test_cfg,
                                     data_preprocessor=data_preprocessor(bench)).to(device)


def benchmark_text(model, bench, classes, with_bg):
    """-> [N, C] text embeddings of the benchmark's foreground classes, with its prompt names and templates."""
    return class_embeddings(model, prompt_names(bench, classes, with_bg), get_templates(bench.test_cfg.template))


def data_preprocessor(bench):
    """The benchmark's normalisation of the loaded images (mean/std, BGR->RGB)."""
    return SegDataPreProcessor(**{k: v for k, v in bench.data_preprocessor.items() if k != 'type'})


def _loader(dataset, bench):
    sampler = DefaultSampler(dataset, shuffle=False, seed=0)
    loader = DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=bench.get('num_workers', 0),
                        collate_fn=pseudo_collate)
    return sampler, loader


def _predict_background(data):
    """All-background prediction at the ground-truth size (baseline)."""
    samples = data['data_samples']
    for sample in samples:
        sample.set_data({'pred_sem_seg': PixelData(data=torch.zeros_like(sample.gt_sem_seg.data).long())})
    return samples


def run_benchmark(predict, dataset, bench, *, vis=0, output_dir=None, progress=True, desc='seg'):
    """predict: data batch -> list of SegDataSample with pred_sem_seg -> metrics dict (percent)."""
    classes, with_bg = class_names(dataset)
    metric = SegIoUMetric(ignore_index=dataset.ignore_index, collect_device='gpu' if backend() == 'nccl' else 'cpu')
    metric.dataset_meta = dataset.metainfo
    sampler, loader = _loader(dataset, bench)
    start, vis_files = time.time(), []
    bar = tqdm(zip(sampler, loader), total=len(sampler), desc=desc, disable=not progress or get_rank() != 0,
               dynamic_ncols=True, mininterval=1.0)
    with torch.no_grad():
        for index, data in bar:
            samples = predict(data)
            if index < vis and output_dir:
                vis_files.append(_overlay(samples[0], index, dataset, output_dir, with_bg))
            metric.process(data, [s.to_dict() for s in samples])
    results = metric.evaluate(len(dataset))
    per_class = {name: dict(IoU=_num(iou), Acc=_num(acc))
                 for name, iou, acc in zip(classes, results['IoU'], results['Acc'])}
    out = dict(mIoU=results['mIoU'], aAcc=results['aAcc'], mAcc=results['mAcc'], per_class=per_class,
               protocol=describe(bench, dataset), seconds=time.time() - start)
    if vis_files:
        out['vis'] = vis_files
    return out


def _num(x):
    return None if x != x else float(x)


def _overlay(sample, index, dataset, output_dir, with_bg):
    path = sample.metainfo['img_path']
    name = f'{index:05d}_{osp.splitext(osp.basename(path))[0]}.png'
    gt = sample.gt_sem_seg.data[0].cpu().numpy() if 'gt_sem_seg' in sample else None
    return save_overlay(osp.join(output_dir, 'vis', name), path, sample.pred_sem_seg.data[0].cpu().numpy(), gt,
                        dataset.metainfo['palette'], with_bg)


def evaluate_seg(model, cfg, *, benchmark=None, dataset=None, overrides=(), split=None, vis=0, output_dir=None,
                 progress=True):
    """Zero-shot segmentation of `model` on cfg.evaluate.seg's benchmark (all ranks take part).

    benchmark / dataset: pass them when already built (main_seg checks the data before loading the model);
    overrides: extra 'key=value' items for the benchmark config; split: another split file next to the
    configured one (e.g. 'tune' to choose thresholds); vis: overlays for the first N images under
    output_dir/vis. -> {'mIoU', 'aAcc', 'mAcc', 'per_class': {name: {'IoU', 'Acc'}}, 'protocol': {...},
    'seconds'} (metrics in percent), identical on every rank.
    """
    bench = select_split(benchmark if benchmark is not None else benchmark_from_cfg(cfg, overrides), split)
    dataset = dataset if dataset is not None else build_benchmark_dataset(bench)
    model = getattr(model, 'module', model)
    with eval_mode(model):
        segmentor = build_segmentor(model, dataset, bench).eval()
        return run_benchmark(segmentor.test_step, dataset, bench, vis=vis, output_dir=output_dir,
                             progress=progress, desc=f'seg {bench.dataset.type}')


@contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def evaluate_background(cfg=None, *, benchmark=None, dataset=None, overrides=(), split=None, progress=False):
    """Metrics of predicting background everywhere on the same benchmark (a floor for mIoU)."""
    bench = select_split(benchmark if benchmark is not None else benchmark_from_cfg(cfg, overrides), split)
    dataset = dataset if dataset is not None else build_benchmark_dataset(bench)
    return run_benchmark(_predict_background, dataset, bench, progress=progress, desc='seg background')


def majority_labels(groups, label, ignore_index):
    """groups: [H, W] group index of every pixel, label: [H, W] ground truth -> [H, W]: every group labelled with
    the class that owns most of its labelled pixels (0 for a group with none)."""
    valid = label != ignore_index
    num_classes = int(label[valid].max()) + 1 if valid.any() else 1
    counts = torch.zeros(int(groups.max()) + 1, num_classes, dtype=torch.long, device=label.device)
    counts.index_put_((groups[valid], label[valid]), torch.ones_like(label[valid]), accumulate=True)
    return counts.argmax(1)[groups]


def evaluate_group_oracle(model, cfg=None, *, benchmark=None, dataset=None, overrides=(), split=None, progress=False):
    """Metrics when every final group of every image is labelled with the ground-truth class that owns most of its
    pixels: how well the groups alone cut the images, whatever their class scores (a ceiling for the method's
    labelling); None for a method without groups (`group_view` gives None)."""
    bench = select_split(benchmark if benchmark is not None else benchmark_from_cfg(cfg, overrides), split)
    dataset = dataset if dataset is not None else build_benchmark_dataset(bench)
    model = getattr(model, 'module', model)
    classes, with_bg = class_names(dataset)
    preprocessor = data_preprocessor(bench).to(next(model.parameters()).device)
    with eval_mode(model), torch.no_grad():
        text = benchmark_text(model, bench, classes, with_bg)
        first = preprocessor(pseudo_collate([dataset[0]]), False)['inputs'][0]
        if model.group_view(first[None], text, bg_thresh=0.0) is None:
            return None

        def group_labels(data):
            batch = preprocessor(data, False)
            for img, sample in zip(batch['inputs'], batch['data_samples']):
                label = sample.gt_sem_seg.data[0]
                final = model.group_view(img[None], text, bg_thresh=0.0).maps[-1].permute(2, 0, 1)[None]
                groups = F.interpolate(final, size=label.shape, mode='bilinear', align_corners=False)[0].argmax(0)
                pred = majority_labels(groups, label, dataset.ignore_index)
                sample.set_data({'pred_sem_seg': PixelData(data=pred[None])})
            return batch['data_samples']

        return run_benchmark(group_labels, dataset, bench, progress=progress, desc='seg group oracle')
