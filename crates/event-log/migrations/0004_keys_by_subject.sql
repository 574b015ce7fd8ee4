-- Pages spread over shards (issue 15): erasure deletes a person's keys in
-- every shard, not only the one erasing (a person's words are sealed only
-- in their page's shard, but the erasure does not rely on it), and a page's
-- retention its old days' keys in every shard. This index finds them
-- without naming the shard, by subject or by a subject prefix
-- (text_pattern_ops serves `subject LIKE 'prefix%'`).
CREATE INDEX event_log_keys_by_subject ON event_log_keys (subject text_pattern_ops);
