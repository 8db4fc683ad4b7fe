-- The tiered saver's own tables (see threadline/checkpointers/tiered/).

-- Hot entries possibly stale in Redis, for every replica: never served until invalidated.
CREATE TABLE IF NOT EXISTS threadline_hot_invalid (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    below TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, checkpoint_ns)
);

-- One random id per database, so that deployments sharing a Redis never share hot entries.
CREATE TABLE IF NOT EXISTS threadline_deployment (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    id TEXT NOT NULL
);
