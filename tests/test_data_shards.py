"""datasets/shards.py: shard discovery errors, train/val streams, bad-data counting, val split over ranks/workers."""
import io
import itertools
import os
import random
import tarfile

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from datasets.shards import (BadCounter, ShardConfigError, TrainStream, ValStream, build_train_data, collect_shards,
                             expand_shards, format_counts, iter_tar, make_loader, val_assignment)


def image_bytes(mode='RGB', size=(24, 20), fmt='JPEG', value=128):
    """A uniform image of the given PIL mode, encoded as fmt."""
    w, h = size
    if mode == 'I;16':
        img = Image.fromarray(np.full((h, w), value * 257, dtype=np.uint16))
    elif mode == 'L':
        img = Image.new('L', size, color=value)
    else:
        img = Image.frombytes(mode, size, np.full((h, w, len(mode)), value, dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path, samples):
    """samples: [(key, {ext: bytes})]"""
    with tarfile.open(path, 'w') as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f'{key}.{ext}')
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def good_pair(i):
    return f'{i:06d}', {'jpg': image_bytes(value=i % 250), 'txt': f'a photo number {i}'.encode()}


def cls_sample(i, n_classes=8):
    return f'{i:06d}', {'png': image_bytes(value=i % 250, fmt='PNG'), 'cls': str(i % n_classes).encode()}


def data_cfg(tmp_path, train_names=('pairs',), val_names=('val',), **meta):
    return OmegaConf.create({
        'batch_size': 4, 'num_workers': 0, 'pin_memory': False, 'shuffle_buffer': 8,
        'dataset': {'meta': meta, 'train': list(train_names), 'val': list(val_names)}})


def test_missing_folder_and_empty_pattern_name_dataset_and_path(tmp_path):
    with pytest.raises(ShardConfigError, match=r"dataset 'gcc3m': shard folder not found: .*nowhere"):
        expand_shards('gcc3m', OmegaConf.create({'path': str(tmp_path / 'nowhere'), 'prefix': 'a-{0..3}.tar'}))
    with pytest.raises(ShardConfigError, match=r"dataset 'gcc3m': no shard matches .*gcc-train-\{000..002\}.tar"):
        expand_shards('gcc3m', OmegaConf.create({'path': str(tmp_path), 'prefix': 'gcc-train-{000..002}.tar'}))
    cfg = data_cfg(tmp_path, train_names=('undeclared',))
    with pytest.raises(ShardConfigError, match="'undeclared'"):
        collect_shards(cfg, 'train')


def test_brace_and_glob_patterns_and_partial_shards(tmp_path):
    for i in (0, 2):
        write_tar(tmp_path / f'x-{i:03d}.tar', [good_pair(i)])
    brace = expand_shards('x', OmegaConf.create({'path': str(tmp_path), 'prefix': 'x-{000..002}.tar'}))
    glob = expand_shards('x', OmegaConf.create({'path': str(tmp_path), 'prefix': 'x-*.tar'}))
    assert [os.path.basename(p) for p in brace] == ['x-000.tar', 'x-002.tar'] == [os.path.basename(p) for p in glob]
    cfg = data_cfg(tmp_path, pairs={'path': str(tmp_path), 'prefix': 'x-{000..002}.tar', 'length': 10})
    owner, length, report = collect_shards(cfg, 'train')
    assert length == 10 and set(owner.values()) == {'pairs'} and report == {'pairs': (2, 3)}


def bad_train_world(tmp_path):
    good = [good_pair(i) for i in range(12)]
    weird = [
        ('gray', {'png': image_bytes('L', fmt='PNG'), 'txt': b'a gray square'}),
        ('cmyk', {'jpg': image_bytes('CMYK'), 'txt': b'a cmyk square'}),
        ('rgba', {'png': image_bytes('RGBA', fmt='PNG'), 'txt': b'a transparent square'}),
        ('deep', {'png': image_bytes('I;16', fmt='PNG'), 'txt': b'a 16 bit square'}),
        ('junk', {'jpg': b'this is not an image', 'txt': b'broken'}),
        ('tiny', {'jpg': image_bytes(size=(1, 1)), 'txt': b'one pixel'}),
        ('nocap', {'jpg': image_bytes()}),
        ('blank', {'jpg': image_bytes(), 'txt': b'   '}),
        ('noimg', {'txt': b'caption without image'}),
    ]
    write_tar(tmp_path / 'w-000.tar', good[:6] + weird)
    write_tar(tmp_path / 'w-001.tar', good[6:])
    (tmp_path / 'w-002.tar').write_bytes(b'')
    full = io.BytesIO()
    with tarfile.open(fileobj=full, mode='w') as tar:
        for key, files in [good_pair(100 + i) for i in range(4)]:
            for ext, data in files.items():
                info = tarfile.TarInfo(f'{key}.{ext}')
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / 'w-003.tar').write_bytes(full.getvalue()[:len(full.getvalue()) // 2 + 100])
    return {str(tmp_path / f'w-{i:03d}.tar'): 'web' for i in range(4)}


def test_iter_tar_counts_empty_and_truncated_tars(tmp_path):
    owner = bad_train_world(tmp_path)
    counter = BadCounter()
    keys = {url: [s['__key__'] for s in iter_tar(url, 'web', counter)] for url in sorted(owner)}
    counts = counter.take()['web']
    assert counts == {'unreadable_tar': 1, 'truncated_tar': 1}
    assert len(keys[str(tmp_path / 'w-001.tar')]) == 6
    assert 0 < len(keys[str(tmp_path / 'w-003.tar')]) < 4
    assert keys[str(tmp_path / 'w-002.tar')] == []


def test_train_stream_skips_and_converts_bad_samples_and_counts_them(tmp_path):
    owner = bad_train_world(tmp_path)
    to_tensor = lambda img: torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)
    stream = TrainStream(owner, batch_size=5, img_transform=to_tensor, text_transform=lambda t: torch.tensor(len(t)),
                         shuffle_buffer=4, seed=0, rank=0)
    total = {}
    texts = []
    for batch in itertools.islice(iter(stream), 40):
        assert batch['image'].shape == (5, 3, 8, 8) and torch.isfinite(batch['image']).all()
        texts += batch['text'].tolist()
        for reason, n in batch['bad'].get('web', {}).items():
            total[reason] = total.get(reason, 0) + n
    skipped = {'undecodable_image', 'tiny_image', 'missing_caption', 'empty_caption', 'missing_image',
               'unreadable_tar', 'truncated_tar'}
    converted = {'converted_L', 'converted_CMYK', 'converted_RGBA', 'converted_I;16'}
    assert skipped | converted <= set(total), total
    assert len(b'broken') not in texts and len(b'one pixel') not in texts
    assert 'web: skipped' in format_counts({'web': total}) and 'converted to RGB' in format_counts({'web': total})


def test_train_stream_is_seeded_per_rank(tmp_path):
    write_tar(tmp_path / 'p-0.tar', [good_pair(i) for i in range(10)])
    write_tar(tmp_path / 'p-1.tar', [good_pair(i) for i in range(10, 20)])
    owner = {str(tmp_path / f'p-{i}.tar'): 'p' for i in range(2)}
    key = lambda t: torch.tensor(int(t.split()[-1]))

    def first_batches(rank, seed=0):
        s = TrainStream(owner, 4, lambda img: torch.zeros(1), key, 4, seed, rank)
        return [b['text'].tolist() for b in itertools.islice(iter(s), 5)]

    assert first_batches(0) == first_batches(0)
    assert first_batches(0) != first_batches(1)
    assert first_batches(0) != first_batches(0, seed=1)


def test_train_data_restarts_every_epoch_with_that_epochs_seed(tmp_path):
    write_tar(tmp_path / 'p-0.tar', [good_pair(i) for i in range(10)])
    write_tar(tmp_path / 'p-1.tar', [good_pair(i) for i in range(10, 20)])
    cfg = data_cfg(tmp_path, pairs={'type': 'img_txt_pair', 'path': str(tmp_path), 'prefix': 'p-{0..2}.tar',
                                    'length': 20})
    key = lambda t: torch.tensor(int(t.split()[-1]))

    def batches(data, epoch=None):
        if epoch is not None:
            data.set_epoch(epoch)
        return [next(data)['text'].tolist() for _ in range(3)]

    data = build_train_data(cfg, lambda img: torch.zeros(1), key, rank=0, world=2, seed=7)
    assert (data.length, data.steps_per_epoch, data.shard_report) == (20, 2, {'pairs': (2, 3)})
    first = batches(data)  # without set_epoch: epoch 0
    second = batches(data, 1)
    assert second != first and batches(data, 0) == first and batches(data, 1) == second
    resumed = build_train_data(cfg, lambda img: torch.zeros(1), key, rank=0, world=2, seed=7)
    assert batches(resumed, 1) == second


def test_all_bad_training_data_is_one_clear_error(tmp_path):
    write_tar(tmp_path / 'bad.tar', [('k', {'jpg': b'nope', 'txt': b'x'})] * 3)
    (tmp_path / 'empty.tar').write_bytes(b'')
    stream = TrainStream({str(tmp_path / 'empty.tar'): 'e'}, 2, lambda x: x, lambda t: t, 2, 0, 0)
    with pytest.raises(ShardConfigError, match='no readable sample in any training shard'):
        next(iter(stream))


@pytest.mark.parametrize('n_shards,world,workers', [(5, 2, 3), (1, 2, 2), (4, 2, 2), (3, 2, 1)])
def test_val_assignment_covers_every_sample_once(n_shards, world, workers):
    shards = [f's{i}' for i in range(n_shards)]
    samples_per_shard = 7
    seen = []
    for rank in range(world):
        for worker in range(workers):
            mine, mod, rem = val_assignment(shards, rank, world, worker, workers)
            index = 0
            for s in mine:
                for j in range(samples_per_shard):
                    if index % mod == rem:
                        seen.append((s, j))
                    index += 1
    assert sorted(seen) == sorted((s, j) for s in shards for j in range(samples_per_shard))


@pytest.mark.parametrize('n_shards,workers', [(3, 2), (1, 2)])
def test_val_loader_two_ranks_counts_each_sample_once(tmp_path, n_shards, workers):
    n = 0
    for s in range(n_shards):
        write_tar(tmp_path / f'v-{s}.tar', [cls_sample(i) for i in range(n, n + 9)])
        n += 9
    write_tar(tmp_path / f'v-{n_shards}.tar', [('bad1', {'jpg': b'garbage', 'cls': b'1'}),
                                               ('bad2', {'jpg': image_bytes(), 'cls': b'x'})])
    owner = {str(tmp_path / f'v-{s}.tar'): 'val' for s in range(n_shards + 1)}
    cfg = OmegaConf.create({'num_workers': workers, 'pin_memory': False})
    targets, bad = [], {}
    for rank in range(2):
        stream = ValStream(owner, 4, lambda img: torch.tensor(np.asarray(img)[0, 0, 0], dtype=torch.float32), rank, 2)
        for batch in make_loader(stream, cfg, seed=0, rank=rank):
            for reason, k in batch['bad'].get('val', {}).items():
                bad[reason] = bad.get(reason, 0) + k
            if batch['image'] is not None:
                targets += list(zip(batch['image'].tolist(), batch['target'].tolist()))
    expected = [(float(i % 250), i % 8) for i in range(n)]
    assert sorted(targets) == sorted(expected)
    assert bad == {'undecodable_image': 1, 'bad_label': 1}


def test_shuffle_buffer_starts_early_and_keeps_every_sample():
    import random
    from datasets.shards import shuffled
    pulled = []

    def source():
        for i in range(500):
            pulled.append(i)
            yield i
    stream = shuffled(source(), bufsize=200, rng=random.Random(0), initial=10)
    first = next(stream)
    assert len(pulled) <= 12  # the first sample comes out long before the buffer is full
    rest = list(stream)
    assert sorted([first] + rest) == list(range(500))
    assert [first] + rest != list(range(500))


def test_split_shard_sampling_reads_the_published_slices(tmp_path, monkeypatch):
    """webdataset 0.1.103 as the published code used it: the shard list in config order, sliced [rank::world]
    then [worker::workers], each slice read whole per pass in the order random.Random(pass + 17) gives."""
    owner, shard_of_sample = {}, {}
    for dataset, first in (('gcc12m', 0), ('gcc3m', 100)):  # config order, not sorted
        for i in range(6):
            path = str(tmp_path / f'{dataset}-{i}.tar')
            numbers = [first + 10 * i + j for j in range(3)]
            write_tar(path, [good_pair(n) for n in numbers])
            owner[path] = dataset
            shard_of_sample.update({n: path for n in numbers})
    shard_list = list(owner)
    key = lambda t: torch.tensor(int(t.split()[-1]))
    seen = []
    for rank, worker in itertools.product(range(2), range(2)):
        monkeypatch.setattr('datasets.shards.worker_part', lambda w=worker: (w, 2))
        stream = TrainStream(owner, 3, lambda img: torch.zeros(1), key, 1, 0, rank, world=2, shard_sampling='split')
        mine = shard_list[rank::2][worker::2]
        passes = list(itertools.islice(stream.shard_urls(), 3 * len(mine)))
        for n in range(3):
            expected = list(mine)
            random.Random(n + 17).shuffle(expected)
            assert passes[n * len(mine):(n + 1) * len(mine)] == expected
        seen += mine
        read = {shard_of_sample[n] for b in itertools.islice(iter(stream), 4) for n in b['text'].tolist()}
        assert read == set(mine)
    assert sorted(seen) == sorted(shard_list)
    monkeypatch.setattr('datasets.shards.worker_part', lambda: (3, 4))
    crowded = TrainStream(owner, 3, lambda img: torch.zeros(1), key, 1, 0, 5, world=6, shard_sampling='split')
    with pytest.raises(ShardConfigError, match='split leaves rank 5 worker 3 without a shard'):
        next(crowded.shard_urls())
    with pytest.raises(ShardConfigError, match='data.shard_sampling must be one of'):
        TrainStream(owner, 3, lambda img: img, key, 1, 0, 0, shard_sampling='sorted')
