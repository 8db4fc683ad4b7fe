-- Thread records on the sqlite backend (see threadline/checkpointers/records.py).
CREATE TABLE IF NOT EXISTS threadline_threads (
    thread_key TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    user_id TEXT,
    title TEXT NOT NULL,
    created_at REAL NOT NULL, -- Unix seconds
    updated_at REAL NOT NULL,
    message_count INTEGER NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    ttl_seconds REAL,
    hold INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'live',
    swept_at REAL
);

CREATE INDEX IF NOT EXISTS threadline_threads_by_tenant
    ON threadline_threads (tenant, updated_at DESC, thread_key DESC);

CREATE INDEX IF NOT EXISTS threadline_threads_by_user
    ON threadline_threads (tenant, user_id, updated_at DESC, thread_key DESC);

-- The statement that stores a turn's checkpoint upserts its record: owner, title, creation and
-- metadata are kept; the time and message count follow the turn.
CREATE TRIGGER IF NOT EXISTS threadline_record_thread
AFTER INSERT ON checkpoints
WHEN json_type(CAST(NEW.metadata AS TEXT), '$.threadline_thread') = 'object'
BEGIN
    INSERT INTO threadline_threads
        (thread_key, tenant, thread_id, user_id, title, created_at, updated_at, message_count)
    SELECT NEW.thread_id, json_extract(r.value, '$.tenant'), json_extract(r.value, '$.thread_id'),
           json_extract(r.value, '$.user_id'), json_extract(r.value, '$.title'),
           json_extract(r.value, '$.created_at'), json_extract(r.value, '$.updated_at'),
           json_extract(r.value, '$.message_count')
    FROM (SELECT json_extract(CAST(NEW.metadata AS TEXT), '$.threadline_thread') AS value) AS r
    WHERE true
    ON CONFLICT (thread_key) DO UPDATE SET
        updated_at = excluded.updated_at, message_count = excluded.message_count;
END;
