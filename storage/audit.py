"""The append-only, hash-chained audit log.

Each event stores ``hash = SHA-256(canonical JSON of [seq, ts, actor, action,
object_id, payload, prev_hash])`` where ``payload`` is the event's canonical JSON text
exactly as stored and ``prev_hash`` is the hash of event ``seq - 1`` (64 zeros for the
first). ``seq`` runs 1, 2, 3, ... without gaps. So an edited field, a deleted, inserted
or reordered event all break a link that :func:`verify_chain` names. Events that record
clinical rows carry those rows' digests (:mod:`._digests`), and :func:`verify_chain`
recomputes them from the rows: an edited, deleted or unrecorded prediction, tile set,
heatmap or alert is named too.

What a chain cannot show by itself is a cut-off tail or a wholesale rewrite: for that
the head (seq + hash) is written outside the database, an *anchor* (:class:`AuditAnchor`),
and later checked to still be in the chain.

Appends are serialised so that concurrent writers cannot fork the chain: SQLite writers
already hold the database's write lock (``BEGIN IMMEDIATE``); on PostgreSQL each
writing transaction takes ``pg_advisory_xact_lock`` first. The primary key on ``seq``
and the unique hash are the last line of defence. UPDATE and DELETE are refused by
triggers on both backends (created in the first migration; migration 0003 adds them to
the clinical tables, where an alert may only be acknowledged, once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from marginwatch.engine.errors import AuditChainError
from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from ._digests import check_rows
from .models import AuditEvent, Base
from .records import AuditEventView, AuditReport

__all__ = [
    "GENESIS_HASH",
    "AnchorKeeper",
    "AuditAnchor",
    "append_event",
    "canonical_json",
    "event_hash",
    "json_finite",
    "lock_chain",
    "verify_chain",
]

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# Any constant works; this one spells "mwaudit" so it is recognisable in pg_locks.
_PG_LOCK_KEY = 0x6D7761756469_74


def json_finite(value: Any) -> Any:
    """``value`` (JSON-ready) with NaN and infinities as None: canonical JSON has neither."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_finite(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept, NaN refused: one text per value."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _ts_text(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(
    seq: int,
    ts: datetime,
    actor: str,
    action: str,
    object_id: str,
    payload_json: str,
    prev_hash: str,
) -> str:
    content = canonical_json([seq, _ts_text(ts), actor, action, object_id, payload_json, prev_hash])
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def lock_chain(session: Session) -> None:
    """Serialise audit appends for the rest of this transaction (PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


_events = Base.metadata.tables["audit_events"]
_HEAD = select(_events.c.seq, _events.c.hash).order_by(_events.c.seq.desc()).limit(1)
_INSERT_EVENT = insert(_events)


def append_event(
    session: Session,
    action: str,
    object_id: str | int,
    payload: Mapping[str, Any],
    actor: str,
    now: datetime | None = None,
) -> AuditEvent:
    """Add the next event of the chain inside the caller's writing transaction.

    Returns the event as written (not attached to the session). The head is read from
    the database once per transaction, then followed in ``session.info``: the chain's
    lock (SQLite's write lock, PostgreSQL's advisory lock) is held until commit, so no
    other writer can move it meanwhile.
    """
    lock_chain(session)
    transaction = session.get_transaction()
    head = session.info.get("audit_head")
    if head is None or session.info.get("audit_transaction") is not transaction:
        head = session.connection().execute(_HEAD).first()
    seq, prev = (1, GENESIS_HASH) if head is None else (head[0] + 1, head[1])
    # Microsecond precision is what every backend stores; the hash must survive a round trip.
    ts = (now or datetime.now(UTC)).astimezone(UTC)
    payload_json = canonical_json(dict(payload))
    row: dict[str, Any] = {"seq": seq, "ts": ts, "actor": actor, "action": action,
                           "object_id": str(object_id), "payload_json": payload_json,
                           "prev_hash": prev}
    row["hash"] = event_hash(**row)
    session.flush()  # rows the ORM still holds go first: the event may cite them
    session.connection().execute(_INSERT_EVENT, row)
    session.info["audit_head"] = (seq, row["hash"])  # for the next append and the anchor
    session.info["audit_transaction"] = transaction
    return AuditEvent(**row)


def to_view(event: AuditEvent) -> AuditEventView:
    try:
        payload = json.loads(event.payload_json)
    except ValueError:
        payload = {"unparseable": event.payload_json}
    return AuditEventView(
        seq=event.seq,
        ts=event.ts,
        actor=event.actor,
        action=event.action,
        object_id=event.object_id,
        payload=payload if isinstance(payload, dict) else {"value": payload},
        prev_hash=event.prev_hash,
        hash=event.hash,
    )


def _walk(session: Session, batch: int = 2000) -> Iterator[AuditEvent]:
    last = None
    while True:
        query = select(AuditEvent).order_by(AuditEvent.seq).limit(batch)
        if last is not None:
            query = query.where(AuditEvent.seq > last)
        rows = session.scalars(query).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq
        session.expunge_all()


@dataclass(frozen=True)
class AuditAnchor:
    """A chain head (seq + hash) kept outside the database."""

    seq: int
    hash: str

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> AuditAnchor:
        file = Path(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            return cls(seq=int(data["seq"]), hash=str(data["hash"]))
        except FileNotFoundError as exc:
            raise AuditChainError(f"{file}: anchor file not found") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AuditChainError(
                f"{file}: not an audit anchor (expected JSON with seq and hash): {exc}"
            ) from exc

    def write(self, path: str | os.PathLike[str]) -> None:
        """Atomically replace ``path`` (temporary file + rename in the same folder)."""
        file = Path(path)
        body = canonical_json(
            {"seq": self.seq, "hash": self.hash, "written_at": _ts_text(datetime.now(UTC))}
        )
        fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(body + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class AnchorKeeper:
    """Keeps an anchor file at the chain head as events are appended (the daemon's).

    :meth:`advance` is told each committed head; the file is rewritten (atomically)
    once ``every_events`` new events have been added since it last was, and by
    :meth:`flush`. It never moves backwards, and it refuses to start over an anchor
    that the chain no longer holds (:meth:`check_start`): that file is evidence.
    """

    def __init__(self, path: str | os.PathLike[str], every_events: int) -> None:
        self.path = Path(path)
        self.every_events = max(1, every_events)
        self._lock = threading.Lock()
        self._written: AuditAnchor | None = None
        self._head: AuditAnchor | None = None
        self.failed = False

    def check_start(self, session: Session) -> None:
        """Refuse (AuditChainError) when the existing anchor is not in the chain."""
        if not self.path.exists():
            return
        anchor = AuditAnchor.read(self.path)
        found = session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == anchor.seq))
        if anchor.seq and found != anchor.hash:
            raise AuditChainError(
                f"{self.path}: the audit chain no longer holds the anchored event seq "
                f"{anchor.seq} ({'missing' if found is None else 'a different hash'}); "
                "the log was truncated or rewritten. Run `marginwatch audit verify`; the "
                "anchor is left as it is"
            )
        self._written = self._head = anchor

    def advance(self, seq: int, digest: str) -> None:
        with self._lock:
            if self._head is not None and seq <= self._head.seq:
                return
            self._head = AuditAnchor(seq, digest)
            due = self._written is None or seq - self._written.seq >= self.every_events
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the latest head now (if it moved); a write error is logged, not raised."""
        with self._lock:
            head = self._head
            if head is None or (self._written is not None and head.seq <= self._written.seq):
                return
            try:
                head.write(self.path)
            except OSError as exc:
                if not self.failed:
                    logger.error("audit anchor could not be written (%s)", exc.strerror)
                self.failed = True
                return
            self.failed = False
            self._written = head


def _link_problem(event: AuditEvent, expected_seq: int, prev: str) -> str | None:
    """Why ``event`` does not continue the chain after ``prev`` at ``expected_seq``, or None."""
    if event.seq != expected_seq:
        return f"expected seq {expected_seq}, found seq {event.seq} (events missing or inserted)"
    if event.prev_hash != prev:
        return "prev_hash does not match the hash of the event before it"
    if event.hash != event_hash(
        event.seq,
        event.ts,
        event.actor,
        event.action,
        event.object_id,
        event.payload_json,
        event.prev_hash,
    ):
        return "content does not match its hash (edited or reordered)"
    return None


def verify_chain(session: Session, anchor: AuditAnchor | None = None) -> AuditReport:
    """Walk every event in ``seq`` order; stop at the first broken link."""
    expected_seq, prev = 1, GENESIS_HASH
    count = 0
    anchor_seen = anchor is None or anchor.seq == 0
    recorded: dict[str, tuple[int, str]] = {}  # "<table>/<id>" -> (seq, digest), latest wins
    for event in _walk(session):
        bad = _link_problem(event, expected_seq, prev)
        if bad is not None:
            return AuditReport(
                ok=False,
                events=count,
                head_seq=expected_seq - 1,
                head_hash=prev,
                first_bad_seq=event.seq,
                reason=bad,
                anchor_checked=anchor is not None,
            )
        if anchor is not None and event.seq == anchor.seq:
            if event.hash != anchor.hash:
                return AuditReport(
                    ok=False,
                    events=count,
                    head_seq=event.seq - 1,
                    head_hash=prev,
                    first_bad_seq=event.seq,
                    reason="hash differs from the anchor's (log rewritten)",
                    anchor_checked=True,
                )
            anchor_seen = True
        if '"digests"' in event.payload_json:
            digests = json.loads(event.payload_json).get("digests") or {}
            recorded.update({key: (event.seq, value) for key, value in digests.items()})
        count += 1
        expected_seq, prev = event.seq + 1, event.hash
    if not anchor_seen:
        assert anchor is not None
        return AuditReport(
            ok=False,
            events=count,
            head_seq=expected_seq - 1,
            head_hash=prev,
            first_bad_seq=expected_seq,
            reason=(
                f"chain ends at seq {expected_seq - 1} but the anchor "
                f"records seq {anchor.seq} (tail truncated)"
            ),
            anchor_checked=True,
        )
    rows = check_rows(session, recorded)
    if rows.problem is not None:
        return AuditReport(
            ok=False,
            events=count,
            head_seq=expected_seq - 1,
            head_hash=prev,
            first_bad_seq=rows.problem.seq,
            reason=f"{rows.problem.row}: {rows.problem.reason}",
            anchor_checked=anchor is not None,
            bad_row=rows.problem.row,
            rows_checked=rows.checked,
            rows_legacy=rows.legacy,
        )
    return AuditReport(
        ok=True,
        events=count,
        head_seq=expected_seq - 1,
        head_hash=prev,
        anchor_checked=anchor is not None,
        rows_checked=rows.checked,
        rows_legacy=rows.legacy,
    )
