#!/usr/bin/env python3
"""Registration ids as 36-character text against 16-byte blobs in SQLite: the same table and
indexes as `registrations` (a UNIQUE id, (person_id, at), (area_path, seq)), 200k rows in
10k-row transactions, twice each; prints microseconds a row and the database size.

usage: python3 tools/sqlite-blob-ids.py   (writes /tmp/bt_*.db)
"""
import sqlite3, uuid, time, os, random
def run(kind, n=200000):
    """Inserts n registration-like rows into a fresh database with ids as text or blobs."""
    path=f'/tmp/bt_{kind}.db'
    for s in ('','-wal','-shm'):
        try: os.remove(path+s)
        except FileNotFoundError: pass
    c=sqlite3.connect(path, isolation_level=None)
    c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA synchronous=NORMAL')
    t='BLOB' if kind=='blob' else 'TEXT'
    c.execute(f'''CREATE TABLE r (seq INTEGER PRIMARY KEY, id {t} NOT NULL UNIQUE, site_id {t} NOT NULL, person_id {t} NOT NULL,
      area_path TEXT NOT NULL, at INTEGER NOT NULL, day TEXT NOT NULL, kind TEXT NOT NULL, channel TEXT NOT NULL, vc TEXT NOT NULL,
      temperature INTEGER, symptoms INTEGER, plate TEXT, origin TEXT, dest TEXT, phone_cipher BLOB, phone_masked TEXT, name BLOB)''')
    c.execute('CREATE INDEX r_person_at ON r(person_id, at)')
    c.execute('CREATE INDEX r_path_seq ON r(area_path, seq)')
    persons=[uuid.uuid4() for _ in range(5000)]
    site=uuid.uuid4()
    conv=(lambda u: u.bytes) if kind=='blob' else str
    rows=[]
    base=1_700_000_000_000_000
    for i in range(n):
        rid=uuid.UUID(int=(base+i)<<64 | random.getrandbits(64))
        rows.append((i+1, conv(rid), conv(site), conv(random.choice(persons)), '150000.150800.150802.150802001', base+i*10, '2026-11-30','checkpoint','self','ABCD',366,0,'蒙L12345','420100','150802', os.urandom(40), '139****5678', os.urandom(30)))
    t0=time.perf_counter()
    for k in range(0,n,10000):
        c.execute('BEGIN')
        c.executemany('INSERT INTO r VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)', rows[k:k+10000])
        c.execute('COMMIT')
    dt=time.perf_counter()-t0
    print(kind, f'{dt/n*1e6:.2f} us/row', os.path.getsize(path)+os.path.getsize(path+'-wal'))
for r in range(2):
    run('text'); run('blob')
