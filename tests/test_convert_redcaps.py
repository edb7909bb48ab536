"""convert_dataset/process_redcaps.py: two RedCaps annotation files -> parquet url/caption lists."""
import json

import pyarrow.parquet as pq
import pytest

from convert_dataset import process_redcaps


def annotation(i, subreddit):
    return {'image_id': f'id{i}', 'author': 'someone', 'url': f'https://i.redd.it/{i}.jpg',
            'raw_caption': f'My RAW Caption {i} [OC]', 'caption': f'my caption {i}', 'subreddit': subreddit,
            'score': i, 'created_utc': 1600000000 + i, 'permalink': f'/r/{subreddit}/comments/{i}/'}


@pytest.fixture
def annotations_dir(tmp_path):
    folder = tmp_path / 'annotations'
    folder.mkdir()
    for name, ids in (('aww_2020.json', range(0, 3)), ('itookapicture_2019.json', range(3, 7))):
        data = {'info': {'subreddit': name.split('_')[0]}, 'annotations': [annotation(i, name) for i in ids]}
        (folder / name).write_text(json.dumps(data))
    (folder / 'README.txt').write_text('not an annotation file')
    return folder


def rows(path):
    table = pq.read_table(path)
    assert table.column_names == ['URL', 'TEXT']
    return list(zip(table['URL'].to_pylist(), table['TEXT'].to_pylist()))


def test_split_into_parts_with_caption_field(annotations_dir, tmp_path):
    out = tmp_path / 'meta' / 'redcaps12m.parquet'
    assert process_redcaps.main([str(annotations_dir), str(out), '--num-split', '3']) == 0
    parts = [rows(tmp_path / 'meta' / f'redcaps12m_part{i}.parquet') for i in range(3)]
    assert [len(p) for p in parts] == [3, 2, 2]
    assert sorted(r for p in parts for r in p) == [(f'https://i.redd.it/{i}.jpg', f'my caption {i}') for i in range(7)]
    assert not out.exists()


def test_single_file_is_a_seeded_shuffle(annotations_dir, tmp_path):
    first, second = tmp_path / 'a.parquet', tmp_path / 'b.parquet'
    process_redcaps.main([str(annotations_dir), str(first)])
    process_redcaps.main([str(annotations_dir), str(second)])
    assert rows(first) == rows(second)
    assert sorted(rows(first)) == sorted((f'https://i.redd.it/{i}.jpg', f'my caption {i}') for i in range(7))
    assert rows(first) != sorted(rows(first))


def test_bad_annotation_file_is_one_error_line(annotations_dir, tmp_path):
    (annotations_dir / 'broken.json').write_text(json.dumps({'annotations': [{'url': 'x'}]}))
    with pytest.raises(SystemExit, match=r'broken.json: annotation 0 has no "url"/"caption" field'):
        process_redcaps.main([str(annotations_dir), str(tmp_path / 'x.parquet')])
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(SystemExit, match=r'no \*\.json annotation files'):
        process_redcaps.main([str(empty), str(tmp_path / 'x.parquet')])
