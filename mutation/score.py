"""Mutation score of cosmic-ray sessions, counting only mutants that ran (not filtered ones).

    python mutation/score.py .mutation/*.sqlite
"""
from __future__ import annotations

import math
import sqlite3
import sys
from pathlib import Path


def open_session(session: Path | str) -> sqlite3.Connection:
    """A cosmic-ray session, read-only: a wrong path is an error, never a new empty file (which
    run.sh would then take for an existing session and never initialise)."""
    path = Path(session)
    if not path.is_file():
        raise SystemExit(f"{path}: no such session (make mutation MUTATE={path.stem} creates it)")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def score(session: Path) -> dict[str, int]:
    """Counts of killed, survived, incompetent (the mutant did not even import) and pending."""
    with open_session(session) as conn:
        rows = conn.execute(
            "SELECT r.worker_outcome, r.test_outcome FROM work_items w "
            "LEFT JOIN work_results r ON r.job_id = w.job_id").fetchall()
    counts = {"killed": 0, "survived": 0, "incompetent": 0, "pending": 0}
    for worker, test in rows:
        if worker == "SKIPPED":
            continue
        if worker is None:
            counts["pending"] += 1
        elif test == "SURVIVED":
            counts["survived"] += 1
        elif test == "INCOMPETENT":
            counts["incompetent"] += 1
        else:  # KILLED, or the worker timed out / crashed on the mutant: the tests noticed
            counts["killed"] += 1
    return counts


def wilson_interval(killed: int, ran: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of the kill rate, when ``ran`` mutants are a random sample."""
    if not ran:
        return 0.0, 1.0
    p = killed / ran
    centre = (p + z * z / (2 * ran)) / (1 + z * z / ran)
    half = z * math.sqrt(p * (1 - p) / ran + z * z / (4 * ran * ran)) / (1 + z * z / ran)
    return max(0.0, centre - half), min(1.0, centre + half)


def main(paths: list[str]) -> int:
    for path in map(Path, paths):
        c = score(path)
        ran = c["killed"] + c["survived"]
        rate = f"{100 * c['killed'] / ran:.1f} %" if ran else "n/a"
        line = (f"{path.stem:12s} killed {c['killed']:4d}  survived {c['survived']:3d}  score {rate:>7s}"
                f"  (incompetent {c['incompetent']}, not run yet {c['pending']})")
        if c["pending"] and ran:
            # cosmic-ray runs a session's mutants in job-id (random UUID) order, so the part that
            # ran is a uniform random sample of the whole
            low, high = wilson_interval(c["killed"], ran)
            line += f"  whole module, 95 %: {100 * low:.1f}-{100 * high:.1f} %"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
