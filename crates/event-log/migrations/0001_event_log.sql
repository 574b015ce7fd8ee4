-- The event log on PostgreSQL (issue 15). Several shards share these
-- tables; each shard has its own positions, hash chain, streams and
-- idempotency keys. Rows are only ever inserted (the head row is updated in
-- place); there is no delete.

-- One row per shard: the last committed position and its hash. An append
-- transaction locks this row (SELECT ... FOR UPDATE) before it assigns
-- positions, so appends to a shard commit one after another, in position
-- order, with no gaps.
CREATE TABLE event_log_heads (
    shard    integer PRIMARY KEY,
    position bigint  NOT NULL CHECK (position >= 0),
    hash     bytea   NOT NULL CHECK (octet_length(hash) = 32)
);

-- The records: every field of the canonical envelope, so the chain can be
-- recomputed from the rows alone.
CREATE TABLE event_log_records (
    shard           integer NOT NULL,
    position        bigint  NOT NULL CHECK (position >= 1),
    stream          text    NOT NULL,
    stream_version  bigint  NOT NULL CHECK (stream_version >= 1),
    event_id        uuid    NOT NULL,
    recorded_at_ms  bigint  NOT NULL,
    type_name       text    NOT NULL,
    schema_version  integer NOT NULL CHECK (schema_version BETWEEN 0 AND 65535),
    causation_id    uuid,
    correlation_id  uuid,
    idempotency_key text,
    payload         bytea   NOT NULL,
    prev_hash       bytea   NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash            bytea   NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (shard, position),
    -- A second line of defence behind the head-row lock: one record per
    -- stream version. It is also the index that finds a stream's version.
    CONSTRAINT event_log_records_stream_version UNIQUE (shard, stream, stream_version)
);

-- One record per idempotency key and shard.
CREATE UNIQUE INDEX event_log_records_idempotency_key
    ON event_log_records (shard, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
