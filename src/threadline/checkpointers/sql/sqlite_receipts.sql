-- Turn receipts on the sqlite backend (see threadline/checkpointers/receipts.py).
CREATE TABLE IF NOT EXISTS threadline_turn_receipts (
    thread_id TEXT NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    expires_at REAL NOT NULL, -- Unix seconds
    PRIMARY KEY (thread_id, name)
);

CREATE INDEX IF NOT EXISTS threadline_turn_receipts_expiry
    ON threadline_turn_receipts (expires_at);

-- The statement that stores a checkpoint records its receipts: one transaction, whoever writes.
-- Expired receipts of the thread make way; a live one keeps its first checkpoint.
CREATE TRIGGER IF NOT EXISTS threadline_record_turn_receipts
AFTER INSERT ON checkpoints
WHEN json_type(CAST(NEW.metadata AS TEXT), '$.threadline_receipts') = 'object'
BEGIN
    DELETE FROM threadline_turn_receipts
    WHERE thread_id = NEW.thread_id
      AND expires_at <= (julianday('now') - 2440587.5) * 86400.0;
    INSERT OR IGNORE INTO threadline_turn_receipts
        (thread_id, name, digest, checkpoint_ns, checkpoint_id, expires_at)
    SELECT NEW.thread_id, names.key, names.value, NEW.checkpoint_ns, NEW.checkpoint_id,
           json_extract(CAST(NEW.metadata AS TEXT), '$.threadline_receipts.expires_at')
    FROM json_each(CAST(NEW.metadata AS TEXT), '$.threadline_receipts.names') AS names;
END;
