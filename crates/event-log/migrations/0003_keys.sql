-- The content-key vault in the database (issue 15): every node of a shard
-- seals and opens content with the same per-person keys. A key is written
-- in the transaction of the first group whose records it seals, so a record
-- is never visible without its key. Erasure deletes the key rows (and Baton
-- then runs VACUUM FULL on this table, so no page of it keeps them) and
-- notes the key ids in event_log_key_erasures, from which the other nodes
-- learn to forget their copies. See docs/privacy.md for what backups and
-- WAL archives still hold.

CREATE TABLE event_log_keys (
    shard    integer NOT NULL,
    key_id   bytea   NOT NULL CHECK (octet_length(key_id) = 16),
    subject  text    NOT NULL,
    day      integer NOT NULL CHECK (day >= 0),
    material bytea   NOT NULL CHECK (octet_length(material) = 32),
    seq      bigserial,
    PRIMARY KEY (shard, key_id)
);
CREATE INDEX event_log_keys_seq ON event_log_keys (shard, seq);
CREATE INDEX event_log_keys_subject ON event_log_keys (shard, subject);

-- Key ids only: an id names no one.
CREATE TABLE event_log_key_erasures (
    shard  integer NOT NULL,
    key_id bytea   NOT NULL,
    seq    bigserial,
    PRIMARY KEY (shard, seq)
);
