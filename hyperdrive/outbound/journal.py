"""The outbound journal, `$DATA/outbound/deliveries.jsonl`: every delivery is on disk (fsynced)
before it is tried, and each attempt and its end are appended, so a restart resumes what was not
delivered. It holds URLs and bodies only: tokens and signatures are added when sent."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hyperdrive.files import fsync_dir, write_atomically

STATUS, NOTIFY = "status", "notify"
COMPACT_AFTER = 1000  # lines: then only the pending deliveries are written out again


@dataclass
class Delivery:
    """One POST to make: a commit status or a notify call, and how its attempts went."""

    id: str
    app: str  # whose token or secret it is sent with (a preview's app)
    kind: str  # STATUS or NOTIFY
    url: str
    body: dict[str, Any]
    forge: str = ""  # a status's forge kind: how its token is sent
    chain: str = ""  # a newer delivery of the same chain replaces an undelivered older one
    deploy: str = ""
    created: float = 0.0
    due: float = 0.0
    attempts: int = 0
    last_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Delivery:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class DeliveryJournal:
    """Pending deliveries in memory, every change appended to the journal and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: dict[str, Delivery] = {}
        self._lines = 0

    def open(self) -> None:
        """Replay the journal (a torn last line is skipped), then write out what is pending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            for line in self.path.read_bytes().splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    self._replay(json.loads(line))
        self.compact()

    def _replay(self, record: dict[str, Any]) -> None:
        op = record["op"]
        if op == "put":
            delivery = Delivery.from_json(record["delivery"])
            self.pending[delivery.id] = delivery
        elif op == "try" and record["id"] in self.pending:
            delivery = self.pending[record["id"]]
            delivery.attempts, delivery.due = int(record["attempts"]), float(record["due"])
            delivery.last_error = str(record.get("error", ""))
        elif op == "done":
            self.pending.pop(record["id"], None)

    def put(self, delivery: Delivery) -> list[Delivery]:
        """Journal a new delivery; the older undelivered ones of its chain end, and are returned."""
        replaced = [
            d for d in self.pending.values() if delivery.chain and d.chain == delivery.chain
        ]
        records: list[dict[str, Any]] = [
            {"op": "done", "id": d.id, "result": "replaced"} for d in replaced
        ]
        records.append({"op": "put", "delivery": asdict(delivery)})
        self._append(records)
        for old in replaced:
            self.pending.pop(old.id, None)
        self.pending[delivery.id] = delivery
        return replaced

    def tried(self, delivery: Delivery, error: str, due: float) -> None:
        delivery.attempts += 1
        delivery.due, delivery.last_error = due, error
        record = {"op": "try", "id": delivery.id, "attempts": delivery.attempts, "due": due}
        self._append([{**record, "error": error}])

    def done(self, delivery: Delivery, result: str) -> None:
        if self.pending.pop(delivery.id, None) is not None:
            self._append([{"op": "done", "id": delivery.id, "result": result}])
        if self._lines > COMPACT_AFTER:
            self.compact()

    def _append(self, records: list[dict[str, Any]]) -> None:
        data = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in records)
        new = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.path.parent)
        self._lines += len(records)

    def compact(self) -> None:
        """Rewrite the journal as the pending deliveries alone (atomically)."""
        lines = [
            json.dumps({"op": "put", "delivery": asdict(d)}, sort_keys=True) + "\n"
            for d in self.pending.values()
        ]
        lines += [
            json.dumps(
                {"op": "try", "id": d.id, "attempts": d.attempts, "due": d.due,
                 "error": d.last_error},
                sort_keys=True,
            ) + "\n"
            for d in self.pending.values() if d.attempts
        ]  # fmt: skip
        write_atomically(self.path, "".join(lines), mode=0o600)
        self._lines = len(lines)
