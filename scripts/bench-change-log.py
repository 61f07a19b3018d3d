#!/usr/bin/env python3
"""What a build of 50 segments over a million users costs the change log's
writer under each index layout (see LIVE_MIGRATIONS in
crates/stratify-store/src/migrations.rs): 4.4 million changes, each build
walking its users in order, 16 384 per commit, with live.db's pragmas.

    /usr/bin/time -f "%U u %S s %e wall" python3 scripts/bench-change-log.py none|user|member
"""
import os
import random
import sqlite3
import sys
import tempfile
import time

variant = sys.argv[1] if len(sys.argv) > 1 else "member"
path = os.path.join(tempfile.mkdtemp(), "live.db")
c = sqlite3.connect(path, isolation_level=None)
for pragma in ("journal_mode=WAL", "synchronous=FULL", "cache_size=-16384", "wal_autocheckpoint=1000"):
    c.execute("PRAGMA " + pragma)
c.executescript("""
CREATE TABLE change_log (seq INTEGER PRIMARY KEY, segment INTEGER NOT NULL, user_id TEXT NOT NULL,
 entered INTEGER NOT NULL, at INTEGER NOT NULL, cause INTEGER NOT NULL, event_seq INTEGER, event_id TEXT);
CREATE INDEX change_log_segment ON change_log(segment, seq);
""")
if variant == "user":
    c.execute("CREATE INDEX change_log_user ON change_log(user_id, seq)")
elif variant == "member":
    c.execute("CREATE INDEX change_log_member ON change_log(segment, user_id, seq)")
random.seed(1)
rows = []
for s in range(50):
    for u in range(1, 1_000_001):
        if random.random() < 0.088:
            rows.append((len(rows) + 1, s + 1, str(u), 1, 1_700_000_000_000, 2))
t = time.time()
for i in range(0, len(rows), 16384):
    c.execute("BEGIN")
    c.executemany("INSERT INTO change_log (seq, segment, user_id, entered, at, cause) VALUES (?,?,?,?,?,?)",
                  rows[i:i + 16384])
    c.execute("COMMIT")
print(variant, len(rows), "changes in", round(time.time() - t, 1), "s,", os.path.getsize(path) >> 20, "MiB")
