"""webdataset pipelines over tar shards: image-caption pairs for training, image-class pairs for zero-shot eval.

Training mixes every dataset named in ``data.dataset.train`` into one infinite stream: each (rank, worker) draws
shards with replacement from its own seeded generator (``data.shard_sampling: split``: reads its own fixed slice of
the shards, as the published code does), reads them, shuffles samples in a buffer and yields full batches. An epoch
is ``sum(length) // (batch_size * world_size)`` batches.

Validation reads every shard once. Work is split over ranks and loader workers by shard when there are enough
shards, by sample index otherwise, so that every sample is counted exactly once over all ranks and workers.

Bad data never stops a run: unreadable tars, undecodable or tiny images, missing captions or labels are skipped;
grayscale/CMYK/RGBA/palette/16-bit images are converted to RGB. Every such event is counted per dataset and shipped
with the batch it would have belonged to (``batch['bad']``), so the main process can report it.
"""
import functools
import io
import itertools
import os.path as osp
import random
import tarfile
from collections import Counter, defaultdict
from glob import glob
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand
from omegaconf import DictConfig, OmegaConf
from PIL import Image

IMAGE_EXTS = ('jpg', 'png', 'jpeg', 'webp')
TEXT_EXTS = ('txt', 'text')
MIN_IMAGE_SIDE = 2
MAX_CONSECUTIVE_BAD = 10000
SHARD_SAMPLING = ('resampled', 'split')
EPOCH_SEED_STRIDE = 1_000_003  # epoch e streams from seed + e * stride: apart from the rank and worker offsets
CONVERTIBLE_MODES = ('L', 'LA', 'P', 'PA', 'CMYK', 'RGBA', 'RGBX', 'YCbCr', '1', 'La', 'RGBa')


class ShardConfigError(ValueError):
    """A dataset's shard path or pattern is wrong (raised at start-up)."""


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is what gets counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class BadCounter:
    """Per-dataset counts of skipped and converted samples. ``take()`` returns the counts since the last call."""

    def __init__(self):
        self.counts = defaultdict(Counter)

    def add(self, dataset: str, reason: str, n: int = 1):
        self.counts[dataset][reason] += n

    def take(self) -> Dict[str, Dict[str, int]]:
        out = {name: dict(c) for name, c in self.counts.items() if c}
        self.counts = defaultdict(Counter)
        return out


def merge_counts(total: Dict[str, Counter], new: Dict[str, Dict[str, int]]) -> Dict[str, Counter]:
    """Add ``new`` ({dataset: {reason: n}}) into ``total`` in place and return it."""
    for name, reasons in new.items():
        total.setdefault(name, Counter()).update(reasons)
    return total


def sum_counts_over_ranks(counts: Dict[str, Dict[str, int]]) -> Dict[str, Counter]:
    """Counts {dataset: {reason: n}} of every rank, summed (the same on every rank)."""
    from utils.distributed import gather_objects
    total = {}
    for part in gather_objects(counts):
        merge_counts(total, part)
    return total


def format_counts(total: Dict[str, Counter]) -> str:
    """'gcc3m: skipped 3 (undecodable_image 2, missing_caption 1), converted 1 (mode_CMYK 1)' or 'none'."""
    parts = []
    for name in sorted(total):
        skipped = {k: v for k, v in total[name].items() if not k.startswith('converted_')}
        converted = {k[len('converted_'):]: v for k, v in total[name].items() if k.startswith('converted_')}
        text = f'{name}: skipped {sum(skipped.values())}'
        if skipped:
            text += ' (' + ', '.join(f'{k} {v}' for k, v in sorted(skipped.items())) + ')'
        if converted:
            text += f', converted to RGB {sum(converted.values())} (' + ', '.join(
                f'{k} {v}' for k, v in sorted(converted.items())) + ')'
        parts.append(text)
    return '; '.join(parts) if parts else 'none'


def expand_shards(name: str, meta: DictConfig) -> List[str]:
    """Existing shard files of one dataset; one clear error when the folder or every file is missing."""
    path, prefix = str(meta.path), str(meta.prefix)
    if not osp.isdir(path):
        raise ShardConfigError(f"dataset '{name}': shard folder not found: {path}")
    pattern = osp.join(path, prefix)
    candidates = sorted(glob(pattern)) if any(c in prefix for c in '*?[') else list(braceexpand(pattern))
    found = [p for p in candidates if osp.isfile(p)]
    if not found:
        raise ShardConfigError(f"dataset '{name}': no shard matches {pattern}")
    return found


def collect_shards(data_cfg: DictConfig, split: str) -> Tuple[Dict[str, str], int, Dict[str, Tuple[int, int]]]:
    """{shard: dataset name}, total length, {name: (found, expected)} over ``data.dataset[split]``."""
    owner, total, found = {}, 0, {}
    for name in data_cfg.dataset[split]:
        if name not in data_cfg.dataset.meta:
            raise ShardConfigError(f"dataset '{name}' in data.dataset.{split} has no entry in data.dataset.meta")
        meta = data_cfg.dataset.meta[name]
        shards = expand_shards(name, meta)
        owner.update({s: name for s in shards})
        total += int(meta.length)
        expected = len(list(braceexpand(str(meta.prefix)))) if '{' in str(meta.prefix) else len(shards)
        found[name] = (len(shards), expected)
    return owner, total, found


def iter_tar(url: str, dataset: str, counter: BadCounter) -> Iterator[dict]:
    """Samples {'__key__', '__dataset__', ext: bytes} of one tar; a broken tar ends early and is counted.

    A tar cut inside a member raises in tarfile; one cut between members ends silently, so the end-of-archive
    marker (two zero blocks after the last member) is checked against the file size.
    """
    current, n = None, 0
    try:
        with tarfile.open(url, mode='r|*') as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = osp.basename(member.name)
                if '.' not in base or base.startswith('.'):
                    continue
                key = osp.join(osp.dirname(member.name), base.split('.', 1)[0])
                ext = base.split('.', 1)[1].lower()
                if current is None or current['__key__'] != key:
                    if current is not None:
                        n += 1
                        yield current
                    current = {'__key__': key, '__dataset__': dataset, '__url__': url}
                current[ext] = tar.extractfile(member).read()
            ended_early = osp.isfile(url) and osp.getsize(url) < tar.offset + 2 * tarfile.BLOCKSIZE
    except (tarfile.TarError, OSError, EOFError, ValueError):
        counter.add(dataset, 'unreadable_tar' if n == 0 and current is None else 'truncated_tar')
        return
    if ended_early:
        counter.add(dataset, 'truncated_tar')
        return
    if current is not None:
        yield current
    elif n == 0:
        counter.add(dataset, 'empty_tar')


def to_rgb(img: Image.Image, dataset: str, counter: BadCounter) -> Image.Image:
    """Any decodable PIL mode -> RGB (16-bit and float images are rescaled to 8 bits); conversions are counted."""
    if img.mode == 'RGB':
        return img
    counter.add(dataset, f'converted_{img.mode}')
    if img.mode in ('P', 'PA') and 'transparency' in img.info:
        return img.convert('RGBA').convert('RGB')
    if img.mode in CONVERTIBLE_MODES:
        return img.convert('RGB')
    arr = np.asarray(img).astype(np.float64)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(-1) if arr.shape[-1] >= 3 else arr[..., 0]
    if img.mode == 'F':
        arr = arr * 255.0 if arr.max() <= 1.0 else arr / arr.max() * 255.0
    elif arr.max() > 255:
        arr = arr / 257.0
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode='L').convert('RGB')


def decode_image(sample: dict, counter: BadCounter) -> Image.Image:
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise BadSample('missing_image')
    try:
        img = Image.open(io.BytesIO(sample[ext]))
        img.load()
    except Exception:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise BadSample('undecodable_image') from None
    if min(img.size) < MIN_IMAGE_SIDE:
        raise BadSample('tiny_image')
    try:
        return to_rgb(img, sample['__dataset__'], counter)
    except Exception:
        raise BadSample('unconvertible_image') from None


def decode_caption(sample: dict) -> str:
    ext = next((e for e in TEXT_EXTS if e in sample), None)
    if ext is None:
        raise BadSample('missing_caption')
    try:
        text = sample[ext].decode('utf-8').strip()
    except UnicodeDecodeError:
        raise BadSample('undecodable_caption') from None
    if not text:
        raise BadSample('empty_caption')
    return text


def decode_label(sample: dict) -> int:
    if 'cls' not in sample:
        raise BadSample('missing_label')
    try:
        return int(sample['cls'].decode('utf-8').strip())
    except (UnicodeDecodeError, ValueError):
        raise BadSample('bad_label') from None


def worker_part() -> Tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def split_work(shards: List[str], part: int, nparts: int) -> Tuple[List[str], int, int]:
    """Split by shard when there are enough, else everyone reads all shards and keeps ``index % mod == rem``."""
    if len(shards) >= nparts:
        return shards[part::nparts], 1, 0
    return shards, nparts, part


def val_assignment(shards: List[str], rank: int, world: int, worker: int, workers: int) -> Tuple[List[str], int, int]:
    """(shards to read, mod, rem) of one rank's worker: over all ranks and workers each sample is kept once."""
    mine, mod, rem = split_work(shards, rank, world)
    if mod == 1:
        return split_work(mine, worker, workers)
    return mine, mod * workers, rem + mod * worker


def stack_samples(items: list):
    """Per-sample tensors, or dicts of them (nested), -> one batch: tensors stacked along a new first dim."""
    if isinstance(items[0], dict):
        return {key: stack_samples([item[key] for item in items]) for key in items[0]}
    return torch.stack(items)


class TrainStream(torch.utils.data.IterableDataset):
    """Infinite, shuffled stream of batches {'image': [B,3,H,W], 'text': [B,77] or [B,1+k,77], 'bad': counts}.

    An image transform that returns a dict (e.g. {'image', 'seg_labels'} with data.img_aug.superpixels) puts each of
    its tensors into the batch under its name.
    sample_transform: (raw sample {extension: bytes, '__url__', '__key__', ...}, RGB image, caption) -> the sample's
    named tensors (or dicts of tensors), used instead of the two transforms when a method trains on more than
    an image and its caption tokens (models.base.SegmentationMethod.train_sample_transform); it may raise
    BadSample. The batch holds every name it returns.
    """

    def __init__(self, owner: Dict[str, str], batch_size: int, img_transform: Callable, text_transform: Callable,
                 shuffle_buffer: int, seed: int, rank: int, world: int = 1, shard_sampling: str = 'resampled',
                 sample_transform: Optional[Callable] = None):
        if shard_sampling not in SHARD_SAMPLING:
            raise ShardConfigError(f'data.shard_sampling must be one of {SHARD_SAMPLING}, got {shard_sampling!r}')
        self.owner = owner
        self.batch_size = batch_size
        self.img_transform = img_transform
        self.text_transform = text_transform
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world = world
        self.shard_sampling = shard_sampling
        self.sample_transform = sample_transform

    def worker_seed(self) -> int:
        worker, workers = worker_part()
        return self.seed + self.rank * workers + worker

    def shard_urls(self) -> Iterator[str]:
        """The shards this (rank, loader worker) reads, forever.

        ``resampled``: drawn with replacement from every shard, seeded per rank and worker.
        ``split`` (the published webdataset 0.1.103 reading): the slice ``[rank::world][worker::workers]`` of the
        shard list in config order, read whole on each pass in the order ``random.Random(pass + 17)`` shuffles it.
        """
        if self.shard_sampling == 'resampled':
            for shard in wds.ResampledShards(sorted(self.owner), seed=self.seed, worker_seed=self.worker_seed,
                                             deterministic=True):
                yield shard['url']
            return
        worker, workers = worker_part()
        mine = list(self.owner)[self.rank::self.world][worker::workers]
        if not mine:
            raise ShardConfigError(f'data.shard_sampling: split leaves rank {self.rank} worker {worker} without a '
                                   f'shard ({len(self.owner)} shards for {self.world} processes x {workers} loader '
                                   'workers); use fewer workers or shard_sampling: resampled')
        for n in itertools.count():
            order = list(mine)
            random.Random(n + 17).shuffle(order)
            yield from order

    def samples(self, counter: BadCounter) -> Iterator[dict]:
        empty_in_a_row = 0
        for url in self.shard_urls():
            n = 0
            for sample in iter_tar(url, self.owner[url], counter):
                n += 1
                yield sample
            empty_in_a_row = 0 if n else empty_in_a_row + 1
            if empty_in_a_row > 10 * len(self.owner) + 10:
                raise ShardConfigError(f'no readable sample in any training shard ({len(self.owner)} shards, '
                                       f'e.g. {url}); bad data so far: {format_counts(counter.counts)}')

    def decoded(self, samples: Iterator[dict], counter: BadCounter) -> Iterator[dict]:
        bad_in_a_row = 0
        for sample in samples:
            try:
                img, text = decode_image(sample, counter), decode_caption(sample)
                if self.sample_transform is None:
                    view = self.img_transform(img)
                    item = {**(view if isinstance(view, dict) else {'image': view}), 'text': self.text_transform(text)}
                else:
                    item = self.sample_transform(sample, img, text)
            except BadSample as bad:
                counter.add(sample['__dataset__'], bad.reason)
                bad_in_a_row += 1
                if bad_in_a_row > MAX_CONSECUTIVE_BAD:
                    raise ShardConfigError(f'{bad_in_a_row} unusable training samples in a row: '
                                           f'{format_counts(counter.counts)}') from None
                continue
            bad_in_a_row = 0
            yield item

    def __iter__(self) -> Iterator[dict]:
        counter = BadCounter()
        rng = random.Random(self.worker_seed())
        stream = self.decoded(shuffled(self.samples(counter), self.shuffle_buffer, rng), counter)
        while True:
            batch = stack_samples([next(stream) for _ in range(self.batch_size)])
            batch['bad'] = counter.take()
            yield batch


def shuffled(samples: Iterator[dict], bufsize: int, rng: random.Random, initial: int = 100) -> Iterator[dict]:
    """Buffer shuffle: start emitting once ``initial`` samples are buffered, then grow the buffer by one per emitted
    sample up to ``bufsize`` (so the first batch does not wait for a full buffer); each emit is a random element."""
    buf = []
    initial = min(initial, bufsize)
    for sample in samples:
        buf.append(sample)
        if len(buf) < bufsize:
            extra = next(samples, None)
            if extra is not None:
                buf.append(extra)
        if len(buf) >= initial:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


class ValStream(torch.utils.data.IterableDataset):
    """Batches {'image': [B,3,H,W], 'target': [B], 'bad': counts} of this rank's share of the val shards (one pass)."""

    def __init__(self, owner: Dict[str, str], batch_size: int, img_transform: Callable, rank: int, world: int):
        self.owner = owner
        self.batch_size = batch_size
        self.img_transform = img_transform
        self.rank = rank
        self.world = world

    def kept_samples(self, counter: BadCounter) -> Iterator[dict]:
        worker, workers = worker_part()
        shards, mod, rem = val_assignment(sorted(self.owner), self.rank, self.world, worker, workers)
        index = 0
        for url in shards:
            for sample in iter_tar(url, self.owner[url], counter):
                if index % mod == rem:
                    yield sample
                index += 1

    def __iter__(self) -> Iterator[dict]:
        counter = BadCounter()
        images, targets = [], []
        for sample in self.kept_samples(counter):
            try:
                img, target = decode_image(sample, counter), decode_label(sample)
                images.append(self.img_transform(img))
                targets.append(target)
            except BadSample as bad:
                counter.add(sample['__dataset__'], bad.reason)
            if len(images) == self.batch_size:
                yield {'image': torch.stack(images), 'target': torch.tensor(targets), 'bad': counter.take()}
                images, targets = [], []
        if images:
            yield {'image': torch.stack(images), 'target': torch.tensor(targets), 'bad': counter.take()}
        else:
            leftover = counter.take()
            if leftover:
                yield {'image': None, 'target': None, 'bad': leftover}


def seed_worker(worker_id: int, base_seed: int, rank: int, num_workers: int):
    """Seed python/numpy in a loader worker: base + rank * num_workers + worker (torch is seeded by the loader)."""
    seed = base_seed + rank * num_workers + worker_id
    random.seed(seed)
    np.random.seed(seed % 2**32)


def make_loader(stream, data_cfg: DictConfig, seed: int, rank: int) -> torch.utils.data.DataLoader:
    workers = int(data_cfg.num_workers)
    return wds.WebLoader(stream, batch_size=None, shuffle=False, num_workers=workers,
                         pin_memory=bool(data_cfg.pin_memory) and torch.cuda.is_available(),
                         persistent_workers=False,
                         worker_init_fn=functools.partial(seed_worker, base_seed=seed, rank=rank,
                                                          num_workers=max(workers, 1)))


class TrainData:
    """The training batches, built once per run: iterating gives TrainStream's batches of the current epoch.

    length: samples the training datasets declare (their `length`); steps_per_epoch: batches per epoch,
    length // (batch_size * world); shard_report: {dataset: (shards found, shards the prefix names)}.
    """

    def __init__(self, stream: TrainStream, data_cfg: DictConfig, rank: int, length: int, steps_per_epoch: int,
                 shard_report: Dict[str, Tuple[int, int]]):
        self.stream = stream
        self.data_cfg = data_cfg
        self.rank = rank
        self.seed = stream.seed
        self.length = length
        self.steps_per_epoch = steps_per_epoch
        self.shard_report = shard_report
        self._batches = None

    def set_epoch(self, epoch: int) -> None:
        """Restart the stream (and its loader workers) seeded with seed + EPOCH_SEED_STRIDE * epoch, so that an epoch
        reads the same batches whether the run started at epoch 0 or resumed there."""
        self.stream.seed = self.seed + EPOCH_SEED_STRIDE * epoch
        self._batches = iter(make_loader(self.stream, self.data_cfg, self.stream.seed, self.rank))

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self._batches is None:
            self.set_epoch(0)
        return next(self._batches)


def build_train_data(data_cfg: DictConfig, img_transform: Callable, text_transform: Callable, rank: int,
                     world: int, seed: int, sample_transform: Optional[Callable] = None) -> TrainData:
    """TrainData over data.dataset.train; raises ShardConfigError for a missing folder or pattern."""
    owner, length, report = collect_shards(data_cfg, 'train')
    stream = TrainStream(owner, int(data_cfg.batch_size), img_transform, text_transform,
                         int(data_cfg.shuffle_buffer), seed, rank, world,
                         str(OmegaConf.select(data_cfg, 'shard_sampling', default='resampled')), sample_transform)
    steps = max(1, length // (int(data_cfg.batch_size) * world))
    return TrainData(stream, data_cfg, rank, length, steps, report)


def build_val_loader(data_cfg: DictConfig, img_transform: Callable, rank: int, world: int,
                     seed: int = 0) -> Tuple[torch.utils.data.DataLoader, int]:
    """(loader over this rank's share, nominal total length)."""
    owner, length, _ = collect_shards(data_cfg, 'val')
    stream = ValStream(owner, int(data_cfg.batch_size), img_transform, rank, world)
    return make_loader(stream, data_cfg, seed, rank), length


def describe_shards(report: Dict[str, Tuple[int, int]]) -> Optional[str]:
    """A log line for datasets with missing shards, or None when all are present."""
    missing = [f'{name}: {found} of {expected} shards found' for name, (found, expected) in report.items()
               if found < expected]
    return '; '.join(missing) if missing else None
