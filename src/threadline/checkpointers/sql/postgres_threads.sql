-- Thread records on the postgres and tiered backends (see threadline/checkpointers/records.py).
-- A turn's record is upserted in the transaction that stores its checkpoint.
CREATE TABLE IF NOT EXISTS threadline_threads (
    thread_key text PRIMARY KEY,
    tenant text NOT NULL,
    thread_id text NOT NULL,
    user_id text,
    title text NOT NULL,
    created_at double precision NOT NULL, -- Unix seconds, exact for keyset cursors
    updated_at double precision NOT NULL,
    message_count integer NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX IF NOT EXISTS threadline_threads_by_tenant
    ON threadline_threads (tenant, updated_at DESC, thread_key DESC);

CREATE INDEX IF NOT EXISTS threadline_threads_by_user
    ON threadline_threads (tenant, user_id, updated_at DESC, thread_key DESC);

-- Retention (see threadline/retention): per-thread TTL, legal hold, live or archived, and the
-- `updated_at` a sweep last handled. Added to tables made before retention existed.
ALTER TABLE threadline_threads ADD COLUMN IF NOT EXISTS ttl_seconds double precision;
ALTER TABLE threadline_threads ADD COLUMN IF NOT EXISTS hold boolean NOT NULL DEFAULT false;
ALTER TABLE threadline_threads ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'live';
ALTER TABLE threadline_threads ADD COLUMN IF NOT EXISTS swept_at double precision;
