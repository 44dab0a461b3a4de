#!/usr/bin/env python3
"""Single-row against 16-row INSERT into a copy of the `registrations` table and its three
indexes (300,000 rows loaded first; 16 KiB pages, WAL, synchronous=NORMAL as the store has
them): microseconds per row for 60,000 rows of one site and person, each way twice.

Python's binding costs the same both ways; the difference is SQLite's. Session 15 measured
7.24 / 7.35 µs per row one at a time against 8.41 / 8.48 µs sixteen at a time, so the fold
kept one row per statement.

usage: python3 tools/sqlite-multirow-insert.py
"""
import os, random, sqlite3, tempfile, time, uuid
schema = """CREATE TABLE registrations (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, site_id TEXT NOT NULL, person_id TEXT NOT NULL,
    area_path TEXT NOT NULL, at INTEGER NOT NULL, day TEXT NOT NULL, kind TEXT NOT NULL, channel TEXT NOT NULL,
    by_user TEXT, verification_code TEXT NOT NULL, temperature INTEGER, symptoms INTEGER NOT NULL DEFAULT 0,
    high_risk_travel INTEGER, plate TEXT, companions INTEGER NOT NULL DEFAULT 0, origin_code TEXT, destination TEXT,
    direction TEXT, visitor INTEGER, unit_code TEXT, visit_reason TEXT, arrival_date TEXT, residence_code TEXT,
    address TEXT, employer TEXT, stay_days INTEGER, purpose TEXT, left_at INTEGER, phone_cipher BLOB, phone_masked TEXT,
    phone_sealed_for TEXT, name TEXT);
CREATE INDEX registrations_person_at ON registrations(person_id, at);
CREATE INDEX registrations_path_seq ON registrations(area_path, seq);"""
cols="id, site_id, person_id, area_path, at, day, kind, channel, by_user, verification_code, temperature, symptoms, high_risk_travel, plate, companions, origin_code, destination, direction, visitor, unit_code, visit_reason, arrival_date, residence_code, address, employer, stay_days, purpose, phone_cipher, phone_masked, phone_sealed_for, name, seq"
paths=['150800.150802.1508020%02d.1508020%02d0%02d'%(a,a,b) for a in range(10) for b in range(10)]
seq=[0]
def row(site_path, person):
    seq[0]+=1
    t=time.time_ns()//1000; tm=t//1000
    return (str(uuid.UUID(int=(tm<<80)|random.getrandbits(80))), 'b3c1f5d2-1111-4222-8333-444455556666', person, site_path, t, '2026-11-30','checkpoint','self',None,'ABCD',366,0,0,'蒙L12345',0,'420100','150802',None,None,None,None,None,None,None,None,None,None,os.urandom(60),'139****5678',None,'李四',seq[0])
def setup(fn):
    if os.path.exists(fn): os.remove(fn)
    for s in ('-wal','-shm'):
        if os.path.exists(fn+s): os.remove(fn+s)
    c=sqlite3.connect(fn, isolation_level=None)
    c.execute('PRAGMA page_size=16384'); c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA synchronous=NORMAL'); c.execute('PRAGMA cache_size=-65536')
    c.executescript(schema)
    c.execute('BEGIN')
    persons=[str(uuid.uuid4()) for _ in range(2000)]
    for i in range(300000):
        c.execute(f"INSERT INTO registrations ({cols}) VALUES ({','.join('?'*32)})", row(random.choice(paths), random.choice(persons)))
    c.execute('COMMIT')
    return c
N=60000
for K in (1,16,1,16):
    c=setup(os.path.join(tempfile.mkdtemp(), 't.db'))
    rows=[row(paths[37],'a3c1f5d2-1111-4222-8333-444455556666') for _ in range(N)]
    sql=f"INSERT INTO registrations ({cols}) VALUES " + ','.join(['('+','.join('?'*32)+')']*K)

    c.execute('BEGIN'); t0=time.perf_counter()
    if K==1:
        c.executemany(sql, rows)
    else:
        c.executemany(sql, [sum(rows[i:i+K],()) for i in range(0,N,K)])
    c.execute('COMMIT'); t1=time.perf_counter()
    print(K, f"{(t1-t0)/N*1e6:.2f} us/row")
    c.close()
