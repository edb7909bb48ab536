"""tools/check_data.py: shard/sample counts against `length`, corrupt samples, missing shards."""
import io
import os
import subprocess
import sys

import pytest
import webdataset as wds
from PIL import Image

from tools import check_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jpeg():
    buf = io.BytesIO()
    Image.new('RGB', (6, 6), (1, 2, 3)).save(buf, format='JPEG')
    return buf.getvalue()


def write_shard(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


def pairs(prefix, n):
    return [{'__key__': f'{prefix}{i:04d}', 'jpg': jpeg(), 'txt': f'caption {i}'} for i in range(n)]


@pytest.fixture
def data(tmp_path):
    """txt: 3 of the 4 prefix shards, 7 good samples + a corrupt jpg + a sample without text, a stray tar;
    cls: 1 shard, 2 good samples + 1 non-integer cls."""
    txt, cls = tmp_path / 'txt', tmp_path / 'cls'
    txt.mkdir()
    cls.mkdir()
    write_shard(txt / 'toy-000000.tar', pairs('a', 3))
    write_shard(txt / 'toy-000001.tar', pairs('b', 2) + [{'__key__': 'broken', 'jpg': jpeg()[:40], 'txt': 'x y'},
                                                         {'__key__': 'notext', 'jpg': jpeg()}])
    write_shard(txt / 'toy-000002.tar', pairs('c', 2))
    write_shard(txt / 'other-000000.tar', pairs('d', 1))
    write_shard(cls / 'val-000000.tar', [{'__key__': 'v0', 'jpg': jpeg(), 'cls': 3},
                                         {'__key__': 'v1', 'png': jpeg(), 'cls': 0},
                                         {'__key__': 'v2', 'jpg': jpeg(), 'cls': 'abc'}])
    cfg = tmp_path / 'cfg.yml'
    cfg.write_text(f"""_base_: {os.path.join(REPO, 'configs', 'default.yml')}
data:
  dataset:
    meta:
      toy:
        type: img_txt_pair
        path: {txt}
        prefix: toy-{{000000..000003}}.tar
        length: 10
      toyval:
        type: img_cls_pair
        path: {cls}
        prefix: val-000000.tar
        length: 2
    train: [toy]
    val: [toyval]
""")
    return cfg


def test_reports_length_corrupt_and_missing(data, capsys):
    assert check_data.main([str(data), '--nproc', '1']) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ['dataset', 'shards', 'found/expected', 'samples', 'length', 'bad', 'samples', 'status']
    assert lines[1].split() == ['toy', '3/4', '7', '10', '2', 'CHECK']
    assert lines[2].split() == ['toyval', '1/1', '2', '2', '1', 'CHECK']
    assert 'ERROR toy: bad sample toy-000001.tar:broken: ' in out
    assert "ERROR toy: bad sample toy-000001.tar:notext: missing txt/text (has ['jpg'])" in out
    assert "ERROR toyval: bad sample val-000000.tar:v2: cls 'abc' is not an integer" in out
    assert 'WARN toy: 1/4 shards of the prefix are missing (toy-000003.tar)' in out
    assert 'WARN toy: 1 .tar files in' in out and 'other-000000.tar' in out
    assert 'WARN toy: 7 usable samples but length is 10' in out and 'data.dataset.meta.toy.length=7' in out
    assert 'WARN toyval' not in out


def test_clean_data_passes_with_opts(data, tmp_path, capsys):
    (tmp_path / 'txt' / 'toy-000001.tar').unlink()
    os.rename(tmp_path / 'txt' / 'toy-000002.tar', tmp_path / 'txt' / 'toy-000001.tar')
    (tmp_path / 'txt' / 'other-000000.tar').unlink()
    opts = ['data.dataset.meta.toy.prefix=toy-{000000..000001}.tar', 'data.dataset.meta.toy.length=5']
    assert check_data.main([str(data), '--datasets', 'toy', '--nproc', '2', '--opts', *opts]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ['toy', '2/2', '5', '5', '0', 'OK']
    assert 'WARN' not in out and 'ERROR' not in out


def test_glob_prefix(data, capsys):
    assert check_data.main([str(data), '--datasets', 'toy', '--opts', 'data.dataset.meta.toy.prefix=toy-*.tar',
                            'data.dataset.meta.toy.length=7']) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ['toy', '3/3', '7', '7', '2', 'CHECK']
    assert 'missing' not in out.replace('missing txt', '') and 'usable samples but' not in out


def test_no_decode_counts_only(data, capsys):
    check_data.main([str(data), '--no-decode', '--datasets', 'toyval'])
    assert capsys.readouterr().out.splitlines()[1].split() == ['toyval', '1/1', '3', '2', '0', 'CHECK']


def test_cli_errors_are_one_line(data, tmp_path):
    script = os.path.join(REPO, 'tools', 'check_data.py')
    cases = [([str(data), '--opts', 'data.dataset.meta.toy.lenght=3'], 'lenght'),
             ([str(tmp_path / 'missing.yml')], 'config file not found'),
             ([str(data), '--datasets', 'gcc3m'], "dataset 'gcc3m' is not in data.dataset.train/val")]
    for args, message in cases:
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=120, cwd='/')
        assert proc.returncode == 1
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
