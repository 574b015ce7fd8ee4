-- Shard leases and fencing (issue 15). One node at a time owns a shard: it
-- decides for the shard's pages (sends, control, timers, dispatch). Its
-- claim is a row here, with an epoch that grows every time the lease
-- changes hands; the database, not the nodes' good manners, refuses a
-- write that carries an epoch other than the live lease's.

CREATE TABLE event_log_leases (
    shard      integer     PRIMARY KEY,
    -- The holder: one id per running node process (a restarted node is a
    -- new holder, so it never inherits a lease it cannot remember holding).
    node       text        NOT NULL,
    epoch      bigint      NOT NULL CHECK (epoch >= 1),
    -- The database's clock decides expiry: one clock for every node.
    expires_at timestamptz NOT NULL,
    -- Where the holder takes the calls other nodes route to it.
    address    text        NOT NULL
);

-- The epoch an append was made under: NULL for a node that does not own
-- the shard (it records webhooks only), the owner's epoch otherwise. It is
-- checked when the head moves (below) and kept beside the head; it is not
-- part of the hash chain.
ALTER TABLE event_log_heads ADD COLUMN epoch bigint;
-- Each record keeps the epoch it was written under too, so an audit can
-- show that no owner wrote after its lease moved on: every epoch's records
-- come before the next epoch's.
ALTER TABLE event_log_records ADD COLUMN epoch bigint;

-- Refuses moving a shard's head under an epoch that is not the live
-- lease's. The lease row is read FOR SHARE, so a takeover (which updates
-- it) waits for an append in flight to commit, and an append that starts
-- after the takeover sees the new epoch.
CREATE FUNCTION event_log_fence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.epoch IS NOT NULL THEN
        PERFORM 1 FROM event_log_leases
         WHERE shard = NEW.shard AND epoch = NEW.epoch AND expires_at > clock_timestamp()
           FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'shard % is not leased under epoch %', NEW.shard, NEW.epoch
                USING ERRCODE = 'BTFNC';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER event_log_heads_fence
    BEFORE UPDATE ON event_log_heads
    FOR EACH ROW EXECUTE FUNCTION event_log_fence();

-- Dispatch cursors (one per shard and app), so that a new owner dispatches
-- from where the old one stopped. Written by the owner only, under its
-- epoch, with the same fence.
CREATE TABLE event_log_dispatch_cursors (
    shard  integer NOT NULL,
    app    text    NOT NULL,
    state  jsonb   NOT NULL,
    epoch  bigint  NOT NULL,
    PRIMARY KEY (shard, app)
);

CREATE TRIGGER event_log_dispatch_cursors_fence
    BEFORE INSERT OR UPDATE ON event_log_dispatch_cursors
    FOR EACH ROW EXECUTE FUNCTION event_log_fence();
