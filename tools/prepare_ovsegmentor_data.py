"""Caption shards -> OVSegmentor's training shards: the captions that name an entity (CC12M -> CC4M), each with its
entities and pre-sampled cross images, as the published datasets/data_process_cc12m.py (filter, makepair) does.

    python tools/prepare_ovsegmentor_data.py 'local_data/gcc12m_shards/*.tar' local_data/cc4m_shards --prefix cc4m
    python tools/prepare_ovsegmentor_data.py 'local_data/toy/shards/*.tar' local_data/toy_ovseg \
        --vocab local_data/toy/classes.json

Input: webdataset tars of image-caption pairs (`<key>.jpg|png|jpeg|webp` + `<key>.txt|text`). A caption is kept when
one of its words is an entity word (exact match; the published 100 words, or the names of --vocab's classes.json).
For every kept sample, --cross-images (10) entities are drawn from its entity words with replacement, each with a
random kept sample that names the same word (possibly itself).

Output in the output folder:
    <prefix>-000000.tar ...   <key>.<image ext> (the bytes as read), <key>.txt, <key>.json
                              {"entities": [words], "cross": [[word, sample index], ...]}; keys are sample indices
    cross_images.npy          int64 [N, 3]: shard number, byte offset and size of each sample's image
    cross_shards.json         {"shards": [file names], "count": N}
The training stream reads a cross image straight from its shard by offset.
"""
import argparse
import glob
import io
import json
import os
import os.path as osp
import sys
import tarfile
import time
from collections import defaultdict
from typing import Dict, List, Optional

import numpy as np
from braceexpand import braceexpand

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from datasets.shards import IMAGE_EXTS, TEXT_EXTS, BadCounter, format_counts, iter_tar  # noqa: E402
from models.ovsegmentor.data import CROSS_INDEX_FILE, CROSS_SHARDS_FILE, EntityVocabulary  # noqa: E402

WRITTEN = (CROSS_INDEX_FILE, CROSS_SHARDS_FILE)


def input_shards(pattern: str) -> List[str]:
    """Shard files of a glob or brace pattern (sorted), or one clear error."""
    paths = sorted(p for part in braceexpand(pattern) for p in (glob.glob(part) if any(c in part for c in '*?[')
                                                                 else [part]) if osp.isfile(p))
    if not paths:
        raise SystemExit(f'error: no input shard matches {pattern}')
    return paths


def sample_parts(sample: dict):
    """(image extension, caption) of a raw shard sample, or None when either is missing or unreadable."""
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    text_ext = next((e for e in TEXT_EXTS if e in sample), None)
    if ext is None or text_ext is None:
        return None
    try:
        caption = sample[text_ext].decode('utf-8').strip()
    except UnicodeDecodeError:
        return None
    return (ext, caption) if caption else None


def find_entities(shards: List[str], vocabulary: EntityVocabulary, counter: BadCounter):
    """[(shard, key, entity words)] of the samples whose caption names an entity, and the number read."""
    kept, total = [], 0
    for shard in shards:
        for sample in iter_tar(shard, 'input', counter):
            total += 1
            parts = sample_parts(sample)
            if parts is None:
                counter.add('input', 'missing_image_or_caption')
                continue
            entities = vocabulary.caption_entities(parts[1])
            if entities:
                kept.append((shard, sample['__key__'], entities))
    return kept, total


def sample_cross_pairs(entities: List[List[str]], per_sample: int, rng: np.random.Generator) -> List[list]:
    """For each sample: `per_sample` [word, index] pairs, words drawn from its own with replacement, each index a
    random sample naming that word (published construct_crossimage)."""
    holders: Dict[str, List[int]] = defaultdict(list)
    for index, words in enumerate(entities):
        for word in words:
            holders[word].append(index)
    pairs = []
    for words in entities:
        drawn = rng.choice(len(words), size=per_sample, replace=True)
        pairs.append([[words[i], int(rng.choice(holders[words[i]]))] for i in drawn])
    return pairs


def add_member(tar: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def image_offsets(path: str) -> Dict[str, tuple]:
    """{key: (byte offset, size)} of the image members of a written shard."""
    out = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, ext = member.name.split('.', 1)
            if ext in IMAGE_EXTS:
                out[key] = (member.offset_data, member.size)
    return out


def prepare(pattern: str, output: str, prefix: str = 'ovseg', vocab: Optional[str] = None, cross_images: int = 10,
            samples_per_shard: int = 10000, seed: int = 0, force: bool = False) -> dict:
    """Write the OVSegmentor shards of the caption shards matching `pattern` into `output`; returns a summary
    {'read', 'kept', 'shards', 'prefix', 'entities': {word: samples}, 'bad'}."""
    if cross_images < 1 or samples_per_shard < 1:
        raise SystemExit('error: --cross-images and --samples-per-shard must be at least 1')
    shards = input_shards(pattern)
    if osp.isdir(output) and os.listdir(output) and not force:
        raise SystemExit(f'error: {output} is not empty (use --force to replace what this tool wrote there)')
    os.makedirs(output, exist_ok=True)
    for name in os.listdir(output):
        if name.startswith(f'{prefix}-') and name.endswith('.tar') or name in WRITTEN:
            os.remove(osp.join(output, name))
    vocabulary = EntityVocabulary.from_config(vocab)
    counter = BadCounter()
    kept, total = find_entities(shards, vocabulary, counter)
    if not kept:
        raise SystemExit(f'error: none of the {total} captions of {pattern} names an entity word')
    pairs = sample_cross_pairs([words for _, _, words in kept], cross_images, np.random.default_rng(seed))
    index_of = {(shard, key): i for i, (shard, key, _) in enumerate(kept)}
    records = np.zeros((len(kept), 3), dtype=np.int64)
    names = [f'{prefix}-{n:06d}.tar' for n in range((len(kept) + samples_per_shard - 1) // samples_per_shard)]
    writers = {}
    for shard in shards:
        for sample in iter_tar(shard, 'input', BadCounter()):
            index = index_of.get((shard, sample['__key__']))
            if index is None:
                continue
            number = index // samples_per_shard
            if number not in writers:
                writers[number] = tarfile.open(osp.join(output, names[number]), 'w')
            ext, caption = sample_parts(sample)
            key = f'{index:09d}'
            add_member(writers[number], f'{key}.{ext}', sample[ext])
            add_member(writers[number], f'{key}.txt', caption.encode('utf-8'))
            add_member(writers[number], f'{key}.json',
                       json.dumps({'entities': kept[index][2], 'cross': pairs[index]}).encode('utf-8'))
    for number, writer in writers.items():
        writer.close()
        for key, (offset, size) in image_offsets(osp.join(output, names[number])).items():
            records[int(key)] = (number, offset, size)
    np.save(osp.join(output, CROSS_INDEX_FILE), records)
    with open(osp.join(output, CROSS_SHARDS_FILE), 'w') as f:
        json.dump({'shards': names, 'count': len(kept)}, f)
    counts = defaultdict(int)
    for _, _, words in kept:
        for word in words:
            counts[word] += 1
    shard_prefix = f'{prefix}-{{000000..{len(names) - 1:06d}}}.tar'
    return {'read': total, 'kept': len(kept), 'shards': len(names), 'prefix': shard_prefix,
            'entities': dict(sorted(counts.items(), key=lambda kv: -kv[1])), 'bad': format_counts(counter.counts)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('input', help="caption shards: a glob or brace pattern, e.g. 'local_data/gcc12m_shards/*.tar'")
    parser.add_argument('output', help='output folder')
    parser.add_argument('--prefix', default='ovseg', help='output shard names <prefix>-NNNNNN.tar')
    parser.add_argument('--vocab', help='class-names JSON whose names are the entity words (default: the published '
                                        '100 words); use the same file as data.text_aug.word_vocab')
    parser.add_argument('--cross-images', type=int, default=10, help='pre-sampled cross images per sample')
    parser.add_argument('--samples-per-shard', type=int, default=10000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true', help='write into a non-empty folder')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    summary = prepare(args.input, args.output, args.prefix, args.vocab, args.cross_images, args.samples_per_shard,
                      args.seed, args.force)
    top = ', '.join(f'{w} {n}' for w, n in list(summary['entities'].items())[:10])
    print(f"kept {summary['kept']} of {summary['read']} captions in {summary['shards']} shards of {args.output} "
          f'({time.time() - start:.1f}s); bad input: {summary["bad"]}; most frequent entities: {top}')
    print(f"prefix: {summary['prefix']}\nlength: {summary['kept']}")


if __name__ == '__main__':
    main()
