"""Data loading: decoded + augmented image-caption samples per second for ONE loader worker, on webdataset shards
written by the toy-world generator at web-image size, through the training pipeline (datasets.shards.TrainStream)
with each config's image and text transforms."""
import tempfile
import time

from .train_bench import CONFIGS


def _stream(cfg, shards_dir, batch):
    from datasets import build_img_transform, build_text_transform
    from datasets.shards import TrainStream
    from glob import glob
    owner = {path: 'bench' for path in sorted(glob(f'{shards_dir}/*.tar'))}
    return TrainStream(owner, batch, build_img_transform(True, cfg.data.img_aug),
                       build_text_transform(True, cfg.data.text_aug), shuffle_buffer=batch, seed=0, rank=0)


def samples_per_second(stream, batches: int) -> float:
    """Samples per second over `batches` batches, after one batch that fills the shuffle buffer."""
    it = iter(stream)
    next(it)
    t = time.process_time()
    n = sum(len(next(it)['image']) for _ in range(batches))
    return n / (time.process_time() - t)


def data_loading(image_size=384, samples=64, batch=16, batches=3, quick=False) -> dict:
    """-> {config: samples/s per worker} for each training config's transforms, plus the setup."""
    from tools.make_toy_data import make_toy_world
    from utils.config import load_config
    out = {'image_side_px': image_size, 'batch': batch, 'timed_batches': batches,
           'clock': 'process CPU time of the (single) worker'}
    with tempfile.TemporaryDirectory() as root:
        make_toy_world(root, size=image_size, train_samples=samples, samples_per_shard=max(samples // 2, 1),
                       cls_samples=1, seg_val=1, seg_tune=1, force=True)
        for name, path in CONFIGS.items():
            cfg = load_config(path)
            if quick:
                cfg.data.img_aug.img_size = 32
            rate = samples_per_second(_stream(cfg, f'{root}/shards', batch), batches)
            out[name] = {'samples_per_s_per_worker': rate, 'img_size': int(cfg.data.img_aug.img_size),
                         'deit_aug': bool(cfg.data.img_aug.deit_aug),
                         'multi_label': int(cfg.data.text_aug.multi_label)}
    return out
