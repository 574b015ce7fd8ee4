-- Pages spread over shards (issue 15): a delivery that carries several
-- shards' pages is recorded in each of those shards, so a person's keys may
-- sit in a shard other than their page's. Erasure deletes a person's keys
-- in every shard (and a page's retention, its old days' keys in every
-- shard); this index finds them without naming the shard, by subject or by
-- a subject prefix (text_pattern_ops serves `subject LIKE 'prefix%'`).
CREATE INDEX event_log_keys_by_subject ON event_log_keys (subject text_pattern_ops);
