"""Mark a cosmic-ray session's mutants inside the named functions as skipped.

    python mutation/skip_functions.py SESSION [FUNCTION ...]
"""
from __future__ import annotations

import sqlite3
import sys


def skip(session: str, functions: list[str]) -> int:
    """Record ``SKIPPED`` for not-yet-run mutants whose enclosing function is in ``functions``."""
    if not functions:
        return 0
    with sqlite3.connect(session) as conn:
        marks = ",".join("?" * len(functions))
        jobs = [row[0] for row in conn.execute(
            f"SELECT s.job_id FROM mutation_specs s LEFT JOIN work_results r ON r.job_id = s.job_id "
            f"WHERE r.job_id IS NULL AND s.definition_name IN ({marks})", functions)]
        conn.executemany(
            "INSERT INTO work_results (worker_outcome, output, test_outcome, diff, job_id) "
            "VALUES ('SKIPPED', ?, NULL, NULL, ?)",
            [(f"not mutated: inside {', '.join(functions)}", job) for job in jobs])
    return len(jobs)


if __name__ == "__main__":
    print(f"{skip(sys.argv[1], sys.argv[2:])} mutants skipped in {' '.join(sys.argv[2:]) or 'no function'}")
