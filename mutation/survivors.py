"""Surviving mutants of cosmic-ray sessions, one line each: line, function, operator, and the
changed source line before and after.

    python mutation/survivors.py .mutation/preprocess.sqlite
"""
from __future__ import annotations

import sys

from score import open_session  # mutation/score.py, beside this file


def survivors(session: str) -> list[tuple[int, str, str, str, str]]:
    """(line, function, operator, original line, mutated line) of each surviving mutant."""
    with open_session(session) as conn:
        rows = conn.execute(
            "SELECT m.start_pos_row, m.definition_name, m.operator_name, r.diff FROM work_results r "
            "JOIN mutation_specs m ON m.job_id = r.job_id WHERE r.test_outcome = 'SURVIVED' "
            "ORDER BY m.start_pos_row, m.operator_name").fetchall()
    found = []
    for line, function, operator, diff in rows:
        changed = [text[1:].strip() for text in (diff or "").splitlines()
                   if text[:1] in "-+" and not text.startswith(("---", "+++"))]
        before = next((text for text in changed[::2]), "")
        after = next((text for text in changed[1::2]), "")
        found.append((line, function or "<module>", operator.split("/")[-1], before, after))
    return found


def main(paths: list[str]) -> int:
    for path in paths:
        for line, function, operator, before, after in survivors(path):
            print(f"{line:4d} {function}: {operator} | {before[:110]} => {after[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
