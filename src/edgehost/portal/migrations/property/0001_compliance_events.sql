-- Append-only event log of one property: rows are added, never updated or deleted.
CREATE TABLE compliance_events (
    id          INTEGER PRIMARY KEY,
    occurred_at TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (length(kind) BETWEEN 1 AND 100),
    actor       TEXT,
    payload     TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(payload)),
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX compliance_events_kind ON compliance_events(kind, id);
