"""MLflow implementation of :class:`medfm.tracking.base.Logger`: journal first, then send.

Every call is appended to the run's journal in ``OUT/mlflow-spool/`` (:mod:`medfm.tracking.spool`)
and returns; a background thread sends the journal to the server through ``MlflowClient`` (no
global state, so nested runs and notebooks do not interfere), in batches at most every
``send_seconds`` (2 s), so a step costs an append to a file, never an HTTP request. Tracking
cannot stop training:

- MLflow's HTTP client gets no retries and a short timeout on that thread, so a dead server costs
  at most ``timeout`` seconds per attempt, and never on the training thread;
- after a failed attempt the server is tried again at most every ``retry_seconds``; one warning
  is logged and the calls keep being journaled;
- what was journaled is sent at the next successful attempt, at :meth:`MLflowLogger.close`, or by
  ``medfm sync OUT``; the run is created on the server by the first successful attempt, and its
  id is written into the journal so a later sync logs to the same run.

mlflow is imported lazily, so the rest of medfm imports fast.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from medfm.tracking.spool import SPOOL_DIR, Journal, UnreachableError, http_settings, upload

log = logging.getLogger(__name__)
_MAX_PARAM_CHARS = 500


class _Sender:
    """The thread that uploads the journals of one run and its nested runs, in order."""

    def __init__(
        self,
        tracking_uri: str,
        spool_dir: Path,
        retry_seconds: float,
        timeout: float,
        send_seconds: float = 2.0,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.spool_dir = spool_dir
        self.retry_seconds = retry_seconds
        self.timeout = timeout
        self.journals: list[tuple[Journal, Callable[[], str | None]]] = []
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.dirty = False  # entries journaled since the last attempt
        self.retry_at = 0.0  # no automatic attempt before this (time.monotonic())
        self.send_seconds = send_seconds  # between automatic sends: one batch, not one per step
        self.forced = self.done = 0  # flush requests made / served
        self.stopping = False
        self.down = False
        self.warned = False

    def add(self, journal: Journal, parent_run_id: Callable[[], str | None]) -> None:
        with self.cond:
            self.journals.append((journal, parent_run_id))

    def replace(self, old: Journal, new: Journal) -> None:
        with self.cond:
            self.journals = [(new if j is old else j, p) for j, p in self.journals]

    def notify(self) -> None:
        with self.cond:
            self.dirty = True
            self._start()
            self.cond.notify()

    def _start(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            self.stopping = False
            self.thread = threading.Thread(target=self._loop, name="medfm-mlflow", daemon=True)
            self.thread.start()

    def _ready(self) -> bool:
        due = self.dirty and time.monotonic() >= self.retry_at
        return self.stopping or self.forced > self.done or due

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self._ready():
                    self.cond.wait(timeout=1.0)
                if self.stopping and self.forced == self.done:
                    return
                forced, self.dirty = self.forced, False
            ok = self._attempt()
            with self.cond:
                if not ok:
                    self.dirty = True
                else:
                    self.retry_at = time.monotonic() + self.send_seconds
                self.done = max(self.done, forced)
                self.cond.notify_all()

    def _attempt(self) -> bool:
        """Upload every journal's unsent entries; False when the server did not answer."""
        sent = 0
        try:
            with http_settings(max_retries=0, timeout=self.timeout):
                for journal, parent_run_id in list(self.journals):
                    sent += upload(journal, self.client, parent_run_id(), artifact_timeout=60.0)
        except Exception as err:  # UnreachableError, or a bug: either way training goes on
            self.retry_at = time.monotonic() + self.retry_seconds
            if not self.down:
                self.down = True
                if not self.warned:
                    self.warned = True
                    log.warning(
                        "MLflow at %s is unreachable (%s); training goes on and tracking calls "
                        "are kept in %s, sent when it answers again (tried at most every %gs, "
                        "and at the end) or by `medfm sync %s`",
                        self.tracking_uri,
                        err if isinstance(err, UnreachableError) else repr(err),
                        self.spool_dir,
                        self.retry_seconds,
                        self.spool_dir.parent,
                    )
            return False
        if self.down:
            self.down = False
            log.info("MLflow at %s answers again; sent %d journaled calls", self.tracking_uri, sent)
        return True

    def flush(self) -> None:
        """One attempt now, whatever the back-off; waits for it."""
        with self.cond:
            self._start()
            self.forced += 1
            target = self.forced
            self.cond.notify_all()
            while self.done < target and self.thread.is_alive():
                self.cond.wait(timeout=1.0)

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
            thread = self.thread
        if thread is not None:
            thread.join(timeout=30)

    def unsent(self) -> int:
        return sum(len(j.unsent()) for j, _ in self.journals)


class MLflowLogger:
    """One MLflow run, journaled to ``spool_dir`` and sent in the background: params truncated
    to 500 characters, non-finite metrics dropped, metric timestamps taken at the call."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str | None = None,
        *,
        spool_dir: str | os.PathLike,
        artifact_location: str | None = None,
        retry_seconds: float = 30.0,
        timeout: float = 2.0,
        _parent: MLflowLogger | None = None,
    ) -> None:
        for name in ("alembic", "mlflow.store.db.utils"):  # schema-migration chatter
            logging.getLogger(name).setLevel(logging.WARNING)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.spool_dir = Path(spool_dir)
        header: dict[str, Any] = {
            "uri": tracking_uri,
            "experiment": experiment,
            "run_name": run_name,
            "artifact_location": artifact_location,
        }
        if _parent is not None:
            header |= {"parent": _parent.spool_id, "parent_run_id": _parent.run_id}
            self._sender = _parent._sender
        else:
            self._sender = _Sender(tracking_uri, self.spool_dir, retry_seconds, timeout)
        self._journal = Journal.new(self.spool_dir, header)
        self._parent = _parent
        self._sender.add(self._journal, lambda: _parent.run_id if _parent else None)
        self._closed = False

    @property
    def run_id(self) -> str | None:
        """The MLflow run id, once the server created the run (None until then)."""
        return self._journal.run_id

    @property
    def spool_id(self) -> str:
        """The name of this run's journal in ``spool_dir``."""
        return self._journal.spool_id

    @property
    def unsent(self) -> int:
        """How many journaled calls (of this run and its nested runs) the server has not taken."""
        return self._sender.unsent()

    def _append(self, op: str, **fields: Any) -> None:
        self._journal.append(op, **fields)
        self._sender.notify()

    def continue_run(self, run_id: str | None = None, spool_id: str | None = None) -> None:
        """Log to an existing run (a resumed training) instead of a new one: the journal
        ``spool_id`` in ``spool_dir`` when it is there (with what it has not sent yet), else the
        MLflow run ``run_id``. Only before the first call."""
        journal = self._journal
        if journal.next_seq or journal.run_id:
            log.warning("Not continuing MLflow run %s: this logger has logged already", run_id)
            return
        path = self.spool_dir / f"{spool_id}.jsonl" if spool_id else None
        if path is not None and path.is_file():
            self._journal = Journal.load(path)
            self._sender.replace(journal, self._journal)
        elif run_id:
            journal.set_run_id(run_id)
        else:
            return
        self._append("status", status="RUNNING")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log ``params`` (values as strings, at most 500 characters each)."""
        values = {k: str(v)[:_MAX_PARAM_CHARS] for k, v in params.items()}
        if values:
            self._append("params", params=values)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log the finite values of ``metrics`` at ``step`` (timestamped now)."""
        now = int(time.time() * 1000)
        items = [
            [k, float(v), now, int(step or 0)]
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        if items:
            self._append("metrics", metrics=items)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's files, under ``artifact_path`` (read when it is sent)."""
        self._append("artifact", path=str(Path(path).resolve()), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set each tag on the run."""
        if tags:
            self._append("tags", tags={k: str(v) for k, v in tags.items()})

    def child(self, run_name: str) -> MLflowLogger:
        """A nested run under this one, in the same experiment, sent by the same thread."""
        return MLflowLogger(
            self.tracking_uri,
            self.experiment,
            run_name,
            spool_dir=self.spool_dir,
            _parent=self,
        )

    def close(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` once; later calls do nothing. The top-level run's close
        makes one more attempt to send everything and waits for it (nested runs are sent with
        it); what is still unsent stays in the spool for ``medfm sync``."""
        if self._closed:
            return
        self._closed = True
        self._append("close", status=status)
        if self._parent is not None:
            return
        self._sender.flush()
        self._sender.stop()
        left = self._sender.unsent()
        if left:
            log.info(
                "%d tracking calls not sent to %s; they are in %s: run `medfm sync %s`",
                left,
                self.tracking_uri,
                self.spool_dir,
                self.spool_dir.parent,
            )


def spool_dir(out_dir: str | os.PathLike) -> Path:
    """Where the journals of runs writing to ``out_dir`` go."""
    return Path(out_dir) / SPOOL_DIR
