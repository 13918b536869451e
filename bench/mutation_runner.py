"""Cost per mutant: the warm, coverage-selected runner (mutation/warm.py) against the bare
baseline, a cold ``python -m pytest -x`` over the module's whole test list (what cosmic-ray's
test-command was before), on the same mutants in the same run.

    python bench/mutation_runner.py --module steps/evaluate.py --tests tests/test_evaluate_metrics.py \\
        --session .mutation/evaluate.sqlite --count 20

Mutants come from a cosmic-ray session (``make mutation`` writes them): every ``--stride``-th
mutant that ran, up to ``--count``. Each is applied with cosmic-ray's own ``use_mutation`` in a
scratch copy of the tracked tree, both runners judge it, and the table shows both verdicts:
they must agree on every killed mutant (selection may only lose a killer that runs the line in
a way coverage cannot see; ``--confirm`` makes the warm runner re-check survivors against the
whole list, as ``CONFIRM=1 make mutation`` does).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cosmic_ray.mutating import use_mutation
from cosmic_ray.plugins import get_operator

REPO = Path(__file__).resolve().parents[1]
WARM = REPO / "mutation" / "warm.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="warm, selected mutant runs vs cold whole-list runs")
    parser.add_argument("--module", required=True, help="the mutated file, relative to the repository")
    parser.add_argument("--tests", nargs="+", required=True, help="the module's test files (run.sh's table)")
    parser.add_argument("--session", required=True, help="a cosmic-ray session of that module")
    parser.add_argument("--count", type=int, default=20, help="mutants to time (default 20)")
    parser.add_argument("--stride", type=int, default=5, help="take every N-th mutant (default 5)")
    parser.add_argument("--confirm", action="store_true", help="warm runner re-checks survivors on the whole list")
    return parser.parse_args(argv)


def sample_mutants(session: Path, module: str, count: int, stride: int) -> list[tuple[str, int, str]]:
    """(operator, occurrence, short description) of mutants that ran, every ``stride``-th."""
    with sqlite3.connect(session) as conn:
        rows = conn.execute(
            "SELECT m.operator_name, m.occurrence, m.start_pos_row FROM mutation_specs m "
            "JOIN work_results r ON r.job_id = m.job_id WHERE r.worker_outcome = 'NORMAL' "
            "AND m.module_path = ? ORDER BY m.job_id", (module,)).fetchall()
    return [(op, occ, f"line {row} {op.split('/')[-1]}") for op, occ, row in rows[::stride][:count]]


def copy_tree(target: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, int]:
    started = time.perf_counter()
    code = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return time.perf_counter() - started, code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mutants = sample_mutants(Path(args.session).resolve(), args.module, args.count, args.stride)
    if not mutants:
        sys.exit(f"no mutants that ran in {args.session}")
    with tempfile.TemporaryDirectory(prefix="mutation-bench-") as scratch:
        tree = Path(scratch) / "tree"
        copy_tree(tree)
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
                   PYTHONPATH=os.pathsep.join(str(tree / p) for p in ("", "training", "tests")))
        sock = Path(scratch) / "warm.sock"
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, str(WARM), "serve", "--socket", str(sock), "--module", args.module,
             "--log", str(Path(scratch) / "runs.log"), *(["--confirm"] if args.confirm else []), *args.tests],
            cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            while not sock.exists():
                if server.poll() is not None:
                    sys.exit("the warm runner did not start (do the tests pass unmutated?)")
                time.sleep(0.2)
            setup = time.perf_counter() - started
            cold_command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args.tests]
            warm_command = [sys.executable, str(WARM), "run", "--socket", str(sock)]
            rows = []
            print(f"{'mutant':42s} {'cold s':>7s} {'cold':>8s} {'warm s':>7s} {'warm':>8s}")
            for operator_name, occurrence, label in mutants:
                with use_mutation(tree / args.module, get_operator(operator_name)(), occurrence):
                    cold = timed(cold_command, tree, env)
                    warm = timed(warm_command, tree, env)
                verdicts = ["killed" if code else "survived" for _, code in (cold, warm)]
                rows.append((cold[0], warm[0], verdicts))
                print(f"{label[:42]:42s} {cold[0]:7.2f} {verdicts[0]:>8s} {warm[0]:7.2f} "
                      f"{verdicts[1]:>8s}", flush=True)
        finally:
            server.kill()
            server.wait()
    cold_mean = statistics.mean(r[0] for r in rows)
    warm_mean = statistics.mean(r[1] for r in rows)
    agree = sum(1 for r in rows if r[2][0] == r[2][1])
    print(f"\n{len(rows)} mutants of {args.module}: cold whole list {cold_mean:.2f} s/mutant, "
          f"warm selected {warm_mean:.2f} s/mutant ({cold_mean / warm_mean:.1f}x), "
          f"warm set-up (baseline under coverage + imports) {setup:.1f} s once; verdicts agree on {agree}/{len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
