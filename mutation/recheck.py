"""RECHECK=1 for mutation/run.sh: re-run only a session's survivors, never its unrun mutants.

    python mutation/recheck.py SESSION begin [LINES]  # survivors (on LINES, e.g. 636,657) back
                                                      # to pending, unrun ones put aside
    python mutation/recheck.py SESSION end            # the unrun ones pending again

A session stopped part-way (its mutants run in random order, so what ran is a random sample)
keeps its unrun mutants for a later plain run: ``begin`` parks them under a placeholder result
that cosmic-ray skips, ``end`` removes the placeholders.
"""
from __future__ import annotations

import sqlite3
import sys
from typing import Optional

PARKED = "parked by mutation/recheck.py"


def begin(conn: sqlite3.Connection, lines: Optional[set[int]] = None) -> str:
    """Survivors (only those on ``lines``, when given) back to pending; unrun mutants parked."""
    parked = conn.execute(
        "INSERT INTO work_results (job_id, worker_outcome, output, test_outcome, diff) "
        "SELECT job_id, 'SKIPPED', ?, NULL, NULL FROM work_items "
        "WHERE job_id NOT IN (SELECT job_id FROM work_results)", (PARKED,)).rowcount
    survivors = [job for job, row in conn.execute(
        "SELECT r.job_id, m.start_pos_row FROM work_results r JOIN mutation_specs m ON m.job_id = r.job_id "
        "WHERE r.test_outcome = 'SURVIVED'") if lines is None or row in lines]
    conn.executemany("DELETE FROM work_results WHERE job_id = ?", [(job,) for job in survivors])
    return f"{len(survivors)} survivors to re-run ({parked} unrun mutants left for a later run)"


def end(conn: sqlite3.Connection) -> str:
    unparked = conn.execute("DELETE FROM work_results WHERE output = ?", (PARKED,)).rowcount
    return f"{unparked} unrun mutants pending again"


def main(argv: list[str]) -> int:
    session, step, *only = argv
    with sqlite3.connect(session, timeout=60) as conn:
        if step == "begin":
            print(begin(conn, {int(n) for n in only[0].split(",")} if only and only[0] else None))
        else:
            print(end(conn))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
