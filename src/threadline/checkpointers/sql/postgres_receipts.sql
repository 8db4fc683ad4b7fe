-- Turn receipts on the postgres and tiered backends (see threadline/checkpointers/receipts.py).
-- Rows are written in the transaction that stores their checkpoint (durable.RECORD_RECEIPTS_SQL).
CREATE TABLE IF NOT EXISTS threadline_turn_receipts (
    thread_id text NOT NULL,
    name text NOT NULL,
    digest text NOT NULL,
    checkpoint_ns text NOT NULL,
    checkpoint_id text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (thread_id, name)
);

CREATE INDEX IF NOT EXISTS threadline_turn_receipts_expiry
    ON threadline_turn_receipts (expires_at);
