"""YFCC100M metadata + CLIP's subset list -> YFCC14M SQLite db and file/caption TSV.

Inputs: ``<input-dir>/yfcc100m_dataset.sql`` (the SQLite metadata of the ``yfcc100m`` package, table
``yfcc100m_dataset`` with ``photoid`` and ``description``) and CLIP's ``yfcc100m_subset_data.tsv``
(line number, photo id, photo hash; no header).
Outputs in ``<output-dir>``:
- ``yfcc100m_dataset.sql``: the same table restricted to the subset, plus a ``photo_hash`` column, so that
  ``python -m yfcc100m.convert_metadata <output-dir> ...`` only exports (and later downloads) the subset.
  Unlike the published script, the 100M input db is never modified.
- ``yfcc14m_dataset.tsv``: columns ``file`` (``<hash[:3]>/<hash[3:6]>/<hash>.jpg``) and ``caption``
  (the description, URL-unquoted, HTML tags removed, ``+`` and line breaks/tabs turned into spaces).
"""
import argparse
import csv
import os
import os.path as osp
import re
import sqlite3
import sys
from urllib.parse import quote, unquote

from tqdm import tqdm

DB_NAME = 'yfcc100m_dataset.sql'
TABLE = 'yfcc100m_dataset'
TSV_NAME = 'yfcc14m_dataset.tsv'
HTML_TAG = re.compile('<.*?>')
SPACE_CHARS = str.maketrans({'\n': ' ', '\r': ' ', '\t': ' ', '+': ' '})
CHUNK = 100_000


def clean_caption(text) -> str:
    """Flickr description -> one-line caption."""
    text = unquote(str(text or ''))
    return HTML_TAG.sub('', text).translate(SPACE_CHARS)


def hash_to_file(photo_hash: str) -> str:
    return f'{photo_hash[0:3]}/{photo_hash[3:6]}/{photo_hash}.jpg'


def read_subset(path: str):
    """Yield (photoid, photo_hash) from CLIP's subset TSV, skipping a header line if there is one."""
    with open(path, newline='', encoding='utf-8') as f:
        for lineno, row in enumerate(csv.reader(f, delimiter='\t'), start=1):
            if len(row) < 3:
                raise SystemExit(f'error: {path}:{lineno}: expected 3 tab-separated columns, got {len(row)}')
            if not row[1].isdigit():
                if lineno == 1:
                    continue
                raise SystemExit(f'error: {path}:{lineno}: photo id {row[1]!r} is not a number')
            yield int(row[1]), row[2]


def load_subset(conn: sqlite3.Connection, subset_tsv: str) -> int:
    conn.execute('CREATE TEMP TABLE subset (photoid INTEGER PRIMARY KEY, photo_hash TEXT)')
    rows = read_subset(subset_tsv)
    total = 0
    with tqdm(desc='reading subset list', unit=' rows') as bar:
        while True:
            chunk = [r for _, r in zip(range(CHUNK), rows)]
            if not chunk:
                return total
            conn.executemany('INSERT OR IGNORE INTO subset VALUES (?, ?)', chunk)
            total += len(chunk)
            bar.update(len(chunk))


def create_subset_db(src_db: str, out_db: str, subset_tsv: str) -> tuple:
    """Write the subset table to ``out_db``; returns (#ids in the list, #rows written)."""
    if osp.exists(out_db):
        os.remove(out_db)
    conn = sqlite3.connect(out_db, uri=True)
    conn.execute('PRAGMA journal_mode = OFF')
    conn.execute('ATTACH DATABASE ? AS src', (f'file:{quote(osp.abspath(src_db))}?mode=ro',))
    columns = [r[1] for r in conn.execute(f'PRAGMA src.table_info({TABLE})')]
    if 'photoid' not in columns or 'description' not in columns:
        raise SystemExit(f'error: {src_db} has no table {TABLE} with photoid and description columns')
    n_ids = load_subset(conn, subset_tsv)
    conn.execute(f'CREATE TABLE main.{TABLE} AS SELECT d.*, s.photo_hash FROM src.{TABLE} AS d '
                 f'JOIN temp.subset AS s ON d.photoid = s.photoid')
    conn.commit()
    n_rows = conn.execute(f'SELECT COUNT(*) FROM main.{TABLE}').fetchone()[0]
    conn.close()
    return n_ids, n_rows


def write_tsv(db: str, tsv: str, total: int) -> None:
    conn = sqlite3.connect(db)
    with open(tsv, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f, delimiter='\t', lineterminator='\n')
        writer.writerow(['file', 'caption'])
        cursor = conn.execute(f'SELECT photo_hash, description FROM {TABLE}')
        for photo_hash, description in tqdm(cursor, total=total, desc='writing tsv'):
            writer.writerow([hash_to_file(photo_hash), clean_caption(description)])
    conn.close()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--input-dir', required=True, help=f'folder holding the 100M metadata {DB_NAME}')
    parser.add_argument('--output-dir', required=True, help=f'folder for the subset {DB_NAME} and {TSV_NAME}')
    parser.add_argument('--subset', default='yfcc100m_subset_data.tsv', help="CLIP's subset list (TSV)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    src_db, out_db = osp.join(args.input_dir, DB_NAME), osp.join(args.output_dir, DB_NAME)
    for path in (src_db, args.subset):
        if not osp.isfile(path):
            raise SystemExit(f'error: {path} does not exist')
    os.makedirs(args.output_dir, exist_ok=True)
    if osp.samefile(args.input_dir, args.output_dir):
        raise SystemExit('error: --output-dir must differ from --input-dir (the 100M db is kept as is)')
    n_ids, n_rows = create_subset_db(src_db, out_db, args.subset)
    print(f'{n_rows}/{n_ids} subset photo ids found in {src_db}; wrote {out_db}')
    if n_rows < n_ids:
        print(f'WARN {n_ids - n_rows} photo ids of {args.subset} are not in {src_db}')
    write_tsv(out_db, osp.join(args.output_dir, TSV_NAME), n_rows)
    print(f'wrote {osp.join(args.output_dir, TSV_NAME)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
