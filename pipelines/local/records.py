"""Execution records of the local engine: SQLite at ``settings.db_path``, tables ``exec_*``.

``exec_executions``: one row per pipeline execution (a retry is a new attempt of the same
row, like SageMaker's RetryPipelineExecution). ``exec_steps``: one row per (execution,
step), updated in place as the step runs; a retry overwrites only the steps it re-runs.
``exec_events``: step transitions, metrics and trials, in order.
WAL mode and one short transaction per write, so other processes can read while a run goes.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from pipelines.common import pid_alive

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exec_executions (
    id TEXT PRIMARY KEY,
    arn TEXT NOT NULL,
    pipeline_name TEXT NOT NULL,
    definition TEXT NOT NULL,
    parameters TEXT NOT NULL,
    status TEXT NOT NULL,
    failure_reason TEXT,
    start_time REAL NOT NULL,
    end_time REAL,
    pid INTEGER,
    attempt INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS exec_steps (
    execution_id TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    execution_attempt INTEGER NOT NULL DEFAULT 1,
    attempts INTEGER NOT NULL DEFAULT 0,
    cached_from TEXT,
    cache_key TEXT,
    start_time REAL,
    end_time REAL,
    duration REAL,
    job_name TEXT,
    arguments TEXT,
    properties TEXT,
    failure_reason TEXT,
    log_path TEXT,
    position INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (execution_id, name)
);
CREATE INDEX IF NOT EXISTS exec_steps_cache ON exec_steps (cache_key, status);
CREATE TABLE IF NOT EXISTS exec_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id TEXT NOT NULL,
    time REAL NOT NULL,
    step TEXT,
    type TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS exec_events_execution ON exec_events (execution_id, id);
"""


@dataclass
class StepRecord:
    """One step of one execution, as recorded."""

    execution_id: str
    name: str
    type: str
    status: str
    execution_attempt: int = 1
    attempts: int = 0
    cached_from: Optional[str] = None
    cache_key: Optional[str] = None
    start_time: Optional[float] = None
    end_time: Optional[float] = None
    duration: Optional[float] = None
    job_name: Optional[str] = None
    arguments: Any = None
    properties: Any = None
    failure_reason: Optional[str] = None
    log_path: Optional[str] = None
    position: int = 0

    @property
    def display_status(self) -> str:
        """Status as shown to people: ``Succeeded (cached)`` for cache hits."""
        return f"{self.status} (cached)" if self.cached_from and self.status == "Succeeded" else self.status


@dataclass
class ExecutionRecord:
    """One pipeline execution, as recorded."""

    id: str
    arn: str
    pipeline_name: str
    definition: dict
    parameters: dict
    status: str
    failure_reason: Optional[str]
    start_time: float
    end_time: Optional[float]
    pid: Optional[int]
    attempt: int = 1
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def duration(self) -> Optional[float]:
        return None if self.end_time is None else self.end_time - self.start_time


_JSON_STEP_FIELDS = ("arguments", "properties")
_STEP_COLUMNS = tuple(StepRecord.__dataclass_fields__)


class Records:
    """Read and write execution records in the SQLite file at ``db_path``."""

    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.row_factory = sqlite3.Row
            with conn:
                yield conn
        finally:
            conn.close()

    # executions ------------------------------------------------------------------
    def create_execution(self, execution_id: str, arn: str, pipeline_name: str, definition: dict,
                         parameters: dict, start_time: float) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO exec_executions (id, arn, pipeline_name, definition, parameters, status,"
                " start_time, pid, attempt) VALUES (?, ?, ?, ?, ?, 'Executing', ?, ?, 1)",
                (execution_id, arn, pipeline_name, json.dumps(definition), json.dumps(parameters),
                 start_time, os.getpid()),
            )

    def start_attempt(self, execution_id: str) -> int:
        """Mark an execution Executing again (a retry); returns its new attempt number."""
        with self._connect() as conn:
            conn.execute(
                "UPDATE exec_executions SET status='Executing', failure_reason=NULL, end_time=NULL,"
                " pid=?, attempt=attempt+1 WHERE id=?", (os.getpid(), execution_id))
            row = conn.execute("SELECT attempt FROM exec_executions WHERE id=?", (execution_id,)).fetchone()
        return int(row["attempt"])

    def finish_execution(self, execution_id: str, status: str, failure_reason: Optional[str] = None,
                         end_time: Optional[float] = None) -> None:
        with self._connect() as conn:
            conn.execute(
                "UPDATE exec_executions SET status=?, failure_reason=?, end_time=? WHERE id=?",
                (status, failure_reason, end_time or time.time(), execution_id))

    def get_execution(self, execution_id: str, with_steps: bool = True) -> Optional[ExecutionRecord]:
        """The execution with this id, or with an id or ARN ending in it (unique)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM exec_executions WHERE id=? OR arn=?",
                                (execution_id, execution_id)).fetchall()
            if not rows:
                rows = conn.execute("SELECT * FROM exec_executions WHERE id LIKE ?",
                                    (f"{execution_id}%",)).fetchall()
        if len(rows) != 1:
            return None
        record = _execution(rows[0])
        if with_steps:
            record.steps = self.steps(record.id)
        return record

    def list_executions(self, limit: int = 50) -> list[ExecutionRecord]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM exec_executions ORDER BY start_time DESC LIMIT ?",
                                (limit,)).fetchall()
        return [_execution(r) for r in rows]

    def running_execution_ids(self) -> set[str]:
        """Ids of executions whose engine process is alive (this process included)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT id, pid FROM exec_executions WHERE status='Executing'").fetchall()
        return {r["id"] for r in rows if r["pid"] == os.getpid() or pid_alive(r["pid"])}

    def fail_stale_executions(self) -> list[str]:
        """Mark executions left Executing by a process that no longer exists as Failed
        (their unfinished steps too); returns their ids."""
        with self._connect() as conn:
            rows = conn.execute("SELECT id, pid FROM exec_executions WHERE status='Executing'").fetchall()
        stale = [(r["id"], r["pid"]) for r in rows if r["pid"] != os.getpid() and not pid_alive(r["pid"])]
        now = time.time()
        for execution_id, pid in stale:
            reason = f"the process running this execution (pid {pid}) ended before it finished"
            with self._connect() as conn:
                conn.execute(
                    "UPDATE exec_steps SET status='Failed', failure_reason=?, end_time=?"
                    " WHERE execution_id=? AND status IN ('Starting', 'Executing')",
                    (reason, now, execution_id))
                conn.execute(
                    "UPDATE exec_executions SET status='Failed', failure_reason=?, end_time=?"
                    " WHERE id=? AND status='Executing'", (reason, now, execution_id))
        return [s[0] for s in stale]

    # steps -----------------------------------------------------------------------
    def save_step(self, step: StepRecord) -> None:
        """Insert or replace the row of ``step``."""
        values = [getattr(step, c) for c in _STEP_COLUMNS]
        values = [json.dumps(v) if c in _JSON_STEP_FIELDS and v is not None else v
                  for c, v in zip(_STEP_COLUMNS, values)]
        with self._connect() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO exec_steps ({', '.join(_STEP_COLUMNS)})"
                f" VALUES ({', '.join('?' * len(_STEP_COLUMNS))})", values)

    def steps(self, execution_id: str) -> list[StepRecord]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM exec_steps WHERE execution_id=? ORDER BY position, start_time",
                                (execution_id,)).fetchall()
        return [_step(r) for r in rows]

    def find_cached(self, pipeline_name: str, cache_key: str, not_before: float) -> Optional[StepRecord]:
        """The latest Succeeded, non-cached step of ``pipeline_name`` with ``cache_key`` that
        finished after ``not_before``."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT s.* FROM exec_steps s JOIN exec_executions e ON e.id = s.execution_id"
                " WHERE s.cache_key=? AND s.status='Succeeded' AND s.cached_from IS NULL"
                " AND e.pipeline_name=? AND s.end_time>=? ORDER BY s.end_time DESC LIMIT 1",
                (cache_key, pipeline_name, not_before)).fetchone()
        return _step(row) if row else None

    # events ----------------------------------------------------------------------
    def add_event(self, execution_id: str, event: dict) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO exec_events (execution_id, time, step, type, data) VALUES (?, ?, ?, ?, ?)",
                (execution_id, time.time(), event.get("step"), str(event.get("type")),
                 json.dumps(event, default=str)))

    def events(self, execution_id: str, type_: Optional[str] = None) -> list[dict]:
        query, args = "SELECT data FROM exec_events WHERE execution_id=?", [execution_id]
        if type_:
            query, args = query + " AND type=?", args + [type_]
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY id", args).fetchall()
        return [json.loads(r["data"]) for r in rows]


def _execution(row: sqlite3.Row) -> ExecutionRecord:
    return ExecutionRecord(
        id=row["id"], arn=row["arn"], pipeline_name=row["pipeline_name"],
        definition=json.loads(row["definition"]), parameters=json.loads(row["parameters"]),
        status=row["status"], failure_reason=row["failure_reason"], start_time=row["start_time"],
        end_time=row["end_time"], pid=row["pid"], attempt=row["attempt"])


def _step(row: sqlite3.Row) -> StepRecord:
    data = {c: row[c] for c in _STEP_COLUMNS}
    for c in _JSON_STEP_FIELDS:
        if data[c] is not None:
            data[c] = json.loads(data[c])
    return StepRecord(**data)
