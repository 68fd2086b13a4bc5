#!/usr/bin/env python3
"""Adds the index tansu 0.6's SQLite storage lacks (docs/adr/0043).

tansu reads a fetched record's headers with a query on `header (topition, offset_id)`, a table
it creates with no index: every record fetched scanned every header of the ledger, so the
broker's cost grew with the square of the ledger (155,472 headers: a broker at 99 % of a core
on a 100-heartbeat/s fleet, its requests timing out). Run once the broker has created its
tables; safe to run again.

usage: tansu-sqlite-index.py <ledger.db> [seconds to wait for the table, default 30]
"""
import sqlite3
import sys
import time

path = sys.argv[1]
deadline = time.monotonic() + float(sys.argv[2] if len(sys.argv) > 2 else 30)
while True:
    try:
        # Read-write, never create: a missing file is not a ledger to index.
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30)
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'header'").fetchone():
            db.execute("CREATE INDEX IF NOT EXISTS otaledger_header_record ON header (topition, offset_id)")
            db.commit()
            db.close()
            break
        db.close()
    except sqlite3.OperationalError as e:  # locked by the broker a moment: try again
        err = e
    else:
        err = "no header table yet"
    if time.monotonic() > deadline:
        sys.exit(f"tansu-sqlite-index: {path}: {err}")
    time.sleep(0.2)
