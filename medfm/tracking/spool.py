"""A run's tracking calls as an append-only journal (``OUT/mlflow-spool/<id>.jsonl``), and the
upload of its unsent entries to MLflow.

Each line is one JSON record. ``{"op": "run", ...}`` heads the file (tracking URI, experiment,
run name, parent journal); ``{"seq": n, "op": "params" | "metrics" | "tags" | "artifact" |
"status" | "close", ...}`` are the calls in the order they were made (metrics keep the timestamp
of the call); ``{"op": "created", "run_id": ...}`` records the MLflow run the journal belongs to
and ``{"op": "sent", "seqs": [...]}`` the entries the server accepted. A killed process loses at
most a line being written; :func:`upload` sends what is not marked sent, so a crash between the
server's answer and the ``sent`` line sends an entry twice, which MLflow absorbs: a metric is
stored once per (key, value, step, timestamp), params and tags are set to the same value again,
an artifact overwrites itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPOOL_DIR = "mlflow-spool"
_METRICS_PER_BATCH = 1000
# Server answers that will not change on a retry: the entry is dropped (with a warning), not
# kept forever at the head of the journal.
_REJECTED = {
    "INVALID_PARAMETER_VALUE",
    "BAD_REQUEST",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE",
    "PERMISSION_DENIED",
}
_env_lock = threading.RLock()


class UnreachableError(Exception):
    """The tracking server did not answer (connection refused, timeout, 5xx)."""


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    with _env_lock:
        old = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for key, value in old.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def http_settings(max_retries: int, timeout: float):
    """MLflow's HTTP retry count and per-request timeout (seconds) set to these values for a
    ``with`` block (MLflow reads them at each request); the environment is restored after it."""
    return _environ(
        {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout))),
        }
    )


class Journal:
    """One run's journal file; safe to append to from one thread while another uploads."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.spool_id = self.path.stem
        self.header = header
        self.run_id: str | None = None
        self.entries: list[dict[str, Any]] = []  # the entries from the first unsent one on
        self.sent: set[int] = set()  # sent entries among them
        self.next_seq = 0
        self.lock = threading.RLock()

    @classmethod
    def new(cls, spool_dir: str | os.PathLike, header: dict[str, Any]) -> Journal:
        """A journal for a new run; its file is written with the first entry."""
        spool_id = f"{header.get('run_name') or 'run'}-{uuid.uuid4().hex[:12]}"
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in spool_id)
        return cls(Path(spool_dir) / f"{safe}.jsonl", {"op": "run", **header})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Journal:
        """Read a journal back (a torn last line, from a kill mid-write, is skipped)."""
        journal = cls(Path(path), {})
        for line in Path(path).read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            op = record.get("op")
            if op == "run":
                journal.header = record
            elif op == "created":
                journal.run_id = record["run_id"]
            elif op == "sent":
                journal.sent.update(record["seqs"])
            elif "seq" in record:
                journal.entries.append(record)
                journal.next_seq = max(journal.next_seq, record["seq"] + 1)
        return journal

    @property
    def parent(self) -> str | None:
        """The journal id of the parent run, for a nested run."""
        return self.header.get("parent")

    def _write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        with open(self.path, "a") as f:
            if fresh:
                f.write(json.dumps(self.header) + "\n")
            f.write(json.dumps(record) + "\n")

    def append(self, op: str, **fields: Any) -> dict[str, Any]:
        """Journal one call; returns its entry."""
        with self.lock:
            entry = {"seq": self.next_seq, "op": op, **fields}
            self.next_seq += 1
            self._write(entry)
            self.entries.append(entry)
            return entry

    def set_run_id(self, run_id: str) -> None:
        """Record the MLflow run id the server gave this journal's run."""
        with self.lock:
            self.run_id = run_id
            self._write({"op": "created", "run_id": run_id})

    def mark_sent(self, seqs: list[int]) -> None:
        """Record that the server accepted the entries numbered ``numbers``."""
        with self.lock:
            self.sent.update(seqs)
            self._write({"op": "sent", "seqs": seqs})

    def unsent(self) -> list[dict[str, Any]]:
        """The entries not marked sent, in order (the sent ones before them are forgotten)."""
        with self.lock:
            done = 0
            while done < len(self.entries) and self.entries[done]["seq"] in self.sent:
                self.sent.discard(self.entries[done]["seq"])
                done += 1
            del self.entries[:done]
            return [e for e in self.entries if e["seq"] not in self.sent]


def _error_code(err: Exception) -> str | None:
    return getattr(err, "error_code", None)


def _call(fn, *args, **kwargs):
    """``fn(*args)``; a connection problem becomes :class:`UnreachableError`, a rejection stays."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # mlflow wraps connection errors in MlflowException
        if _error_code(err) in _REJECTED:
            raise
        raise UnreachableError(f"{type(err).__name__}: {str(err)[:300]}") from err


def _create_run(journal: Journal, client, parent_run_id: str | None) -> str:
    header = journal.header
    name = header["experiment"]
    exp = _call(client.get_experiment_by_name, name)
    if exp is not None:
        exp_id = exp.experiment_id
    else:
        try:
            exp_id = _call(
                client.create_experiment, name, artifact_location=header.get("artifact_location")
            )
        except Exception as err:  # created meanwhile by another run
            if _error_code(err) != "RESOURCE_ALREADY_EXISTS":
                raise
            exp_id = _call(client.get_experiment_by_name, name).experiment_id
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    run = _call(client.create_run, exp_id, run_name=header.get("run_name"), tags=tags)
    return run.info.run_id


def _send(
    client, run_id: str, entries: list[dict[str, Any]], artifact_timeout: float | None
) -> None:
    from mlflow.entities import Metric, Param, RunTag

    op = entries[0]["op"]
    if op == "metrics":
        metrics = [Metric(k, v, ts, step) for e in entries for k, v, ts, step in e["metrics"]]
        _call(client.log_batch, run_id, metrics=metrics)
    elif op == "params":
        params = [Param(k, v) for k, v in entries[0]["params"].items()]
        for start in range(0, len(params), 100):
            _call(client.log_batch, run_id, params=params[start : start + 100])
    elif op == "tags":
        tags = [RunTag(k, v) for k, v in entries[0]["tags"].items()]
        _call(client.log_batch, run_id, tags=tags)
    elif op == "artifact":
        path, where = entries[0]["path"], entries[0].get("artifact_path")
        if not os.path.exists(path):
            log.warning("Artifact %s is gone; not uploaded to MLflow run %s", path, run_id)
            return
        upload_fn = client.log_artifacts if os.path.isdir(path) else client.log_artifact
        timeout = (
            {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(math.ceil(artifact_timeout))}
            if artifact_timeout
            else {}
        )
        with _environ(timeout):
            _call(upload_fn, run_id, path, where)
    elif op == "status":
        _call(client.update_run, run_id, status=entries[0]["status"])
    elif op == "close":
        _call(client.set_terminated, run_id, status=entries[0]["status"])


def _batches(entries: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive metrics entries together (up to 1000 values), every other entry alone."""
    batch: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        n = len(entry["metrics"]) if entry["op"] == "metrics" else 0
        if batch and (entry["op"] != "metrics" or size + n > _METRICS_PER_BATCH):
            yield batch
            batch, size = [], 0
        if entry["op"] == "metrics":
            batch.append(entry)
            size += n
        else:
            yield [entry]
    if batch:
        yield batch


def upload(
    journal: Journal,
    client,
    parent_run_id: str | None = None,
    artifact_timeout: float | None = None,
) -> int:
    """Send ``journal``'s unsent entries in order, creating its run first if needed; the number
    of entries sent (artifact uploads get ``artifact_timeout`` seconds per request). Raises
    :class:`UnreachableError` at the first one the server does not answer (the earlier ones stay
    marked sent)."""
    pending = journal.unsent()
    if journal.run_id is None:
        if not pending:
            return 0
        journal.set_run_id(_create_run(journal, client, parent_run_id))
    sent = 0
    for batch in _batches(pending):
        seqs = [e["seq"] for e in batch]
        try:
            _send(client, journal.run_id, batch, artifact_timeout)
        except UnreachableError:
            raise
        except Exception as err:  # rejected by the server: retrying will not help
            log.warning(
                "MLflow run %s refused %s entry %s (%s); it is dropped",
                journal.run_id,
                batch[0]["op"],
                seqs,
                str(err)[:300],
            )
        journal.mark_sent(seqs)
        sent += len(batch)
    return sent


def find_journals(out: str | os.PathLike) -> list[Path]:
    """Every journal in an ``mlflow-spool`` folder under ``out``, parents before children."""
    paths = sorted(Path(out).rglob(f"{SPOOL_DIR}/*.jsonl"))
    journals = {p: Journal.load(p) for p in paths}
    by_id = {j.spool_id: p for p, j in journals.items()}
    order: list[Path] = []

    def visit(path: Path) -> None:
        if path in order:
            return
        parent = journals[path].parent
        if parent in by_id:
            visit(by_id[parent])
        order.append(path)

    for path in paths:
        visit(path)
    return order


def sync(
    out: str | os.PathLike, tracking_uri: str | None = None, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Upload the unsent entries of every journal under ``out`` (to the URI each was written for,
    or ``tracking_uri``); one ``{"journal", "run_id", "sent", "left", "error"}`` per journal."""
    from mlflow.tracking import MlflowClient

    results: list[dict[str, Any]] = []
    run_ids: dict[str, str | None] = {}
    clients: dict[str, Any] = {}
    for path in find_journals(out):
        journal = Journal.load(path)
        uri = tracking_uri or journal.header.get("uri")
        client = clients.setdefault(uri, MlflowClient(tracking_uri=uri))
        parent_run_id = run_ids.get(journal.parent) or journal.header.get("parent_run_id")
        error, before = None, len(journal.unsent())
        try:
            with http_settings(max_retries=2, timeout=timeout):
                upload(journal, client, parent_run_id)
        except Exception as err:
            error = str(err)[:300]
        run_ids[journal.spool_id] = journal.run_id
        left = len(journal.unsent())
        sent = before - left
        results.append(
            {
                "journal": str(path),
                "run_id": journal.run_id,
                "sent": sent,
                "left": left,
                "error": error,
            }
        )
    return results
