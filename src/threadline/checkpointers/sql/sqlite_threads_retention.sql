-- Retention columns for threadline_threads tables made before retention existed (SQLite has no
-- ADD COLUMN IF NOT EXISTS: the saver runs each statement whose column is missing).
ALTER TABLE threadline_threads ADD COLUMN ttl_seconds REAL;
ALTER TABLE threadline_threads ADD COLUMN hold INTEGER NOT NULL DEFAULT 0;
ALTER TABLE threadline_threads ADD COLUMN status TEXT NOT NULL DEFAULT 'live';
ALTER TABLE threadline_threads ADD COLUMN swept_at REAL;
