-- A task may hold several tokens (issue 17): handing one out (to the machine's boot script, or
-- to its agent's hello) never invalidates the one its agent is using. Each row is the BLAKE3
-- of a token's secret half, hex, with when and to which address it was handed out. The
-- tasks.secret column still opens the task for tokens issued before this migration.
-- Portable SQL, as 0001.
CREATE TABLE task_tokens (
    task_id    TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    secret     TEXT NOT NULL,
    issued_ms  BIGINT NOT NULL,
    issued_to  TEXT NOT NULL
);
CREATE INDEX task_tokens_task ON task_tokens (task_id);
