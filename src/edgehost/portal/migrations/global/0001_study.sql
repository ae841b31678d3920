-- Study users and their progress across all properties; progress is overwritten per user.
CREATE TABLE study_users (
    user_id      TEXT PRIMARY KEY CHECK (length(user_id) BETWEEN 1 AND 200),
    email        TEXT,
    display_name TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE study_progress (
    user_id    TEXT PRIMARY KEY REFERENCES study_users(user_id) ON DELETE CASCADE,
    progress   BLOB NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
