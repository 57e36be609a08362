-- The queuectl schema, version 3, for PostgreSQL: the same tables, columns, states and
-- transitions as schema.sql (read it for what each one means), in PostgreSQL's types. Applied
-- once, in the schema the connection names (queuectl by default), under an advisory lock so that
-- processes starting together create it once; its version is kept in schema_version.

CREATE TABLE IF NOT EXISTS schema_version (
    version  INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS jobs (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused
    task_id          TEXT,
    task_name        TEXT,
    queue            TEXT    NOT NULL,
    state            TEXT    NOT NULL
                     CHECK (state IN ('pending', 'processing', 'completed', 'failed', 'dead')),
    priority         INTEGER NOT NULL DEFAULT 0,
    payload          TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    deliveries       INTEGER NOT NULL DEFAULT 0,
    max_retries      INTEGER,
    next_run_at      DOUBLE PRECISION NOT NULL,
    lease_owner      TEXT,
    lease_expires_at DOUBLE PRECISION,
    expires_at       DOUBLE PRECISION,
    created_at       DOUBLE PRECISION NOT NULL,
    updated_at       DOUBLE PRECISION NOT NULL,
    last_error       TEXT
);

CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (queue, priority DESC, id)
    WHERE state IN {READY_STATES};
CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_expires_at) WHERE state = 'processing';
CREATE INDEX IF NOT EXISTS jobs_completed ON jobs (updated_at) WHERE state = 'completed';
CREATE INDEX IF NOT EXISTS jobs_task_id ON jobs (task_id);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id, queue);
CREATE INDEX IF NOT EXISTS jobs_queue_state ON jobs (queue, state);
CREATE INDEX IF NOT EXISTS jobs_expiring ON jobs (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS config (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS queues (
    name          TEXT PRIMARY KEY,
    arguments     TEXT NOT NULL DEFAULT '{}',
    auto_delete   INTEGER NOT NULL DEFAULT 0,
    exclusive     INTEGER NOT NULL DEFAULT 0,
    expires       DOUBLE PRECISION,
    message_ttl   DOUBLE PRECISION,
    max_priority  INTEGER,
    last_used_at  DOUBLE PRECISION NOT NULL,
    created_at    DOUBLE PRECISION NOT NULL,
    paused        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queues_expiring ON queues (last_used_at) WHERE expires IS NOT NULL;

CREATE TABLE IF NOT EXISTS consumers (
    queue      TEXT NOT NULL,
    owner      TEXT NOT NULL,
    last_seen  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (queue, owner)
);
CREATE INDEX IF NOT EXISTS consumers_owner ON consumers (owner);

CREATE TABLE IF NOT EXISTS exchanges (
    name         TEXT PRIMARY KEY,
    type         TEXT NOT NULL CHECK (type IN ('direct', 'topic', 'fanout')),
    durable      INTEGER NOT NULL DEFAULT 1,
    auto_delete  INTEGER NOT NULL DEFAULT 0,
    arguments    TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE IF NOT EXISTS bindings (
    exchange     TEXT NOT NULL,
    queue        TEXT NOT NULL,
    routing_key  TEXT NOT NULL,
    arguments    TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (exchange, queue, routing_key)
);
CREATE INDEX IF NOT EXISTS bindings_queue ON bindings (queue);

CREATE TABLE IF NOT EXISTS stats (
    minute  BIGINT  NOT NULL,
    queue   TEXT    NOT NULL,
    event   TEXT    NOT NULL,
    count   BIGINT  NOT NULL,
    PRIMARY KEY (minute, queue, event)
);

-- A value comes back as it went in: a str in value, bytes in blob (a column holds one type here).
CREATE TABLE IF NOT EXISTS results (
    key          TEXT PRIMARY KEY,
    value        TEXT,
    blob         BYTEA,
    state        TEXT,
    counter      BIGINT NOT NULL DEFAULT 0,
    expires_at   DOUBLE PRECISION,
    updated_at   DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS results_expires ON results (expires_at) WHERE expires_at IS NOT NULL;
