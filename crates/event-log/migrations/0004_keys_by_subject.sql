-- Pages spread over shards (issue 15): a delivery that carries several
-- shards' pages is recorded in each of those shards, its raw body sealed
-- for every person in it, so a person's keys may sit in a shard other than
-- their page's. Erasure deletes a person's keys in every shard; this index
-- finds them without naming the shard.
CREATE INDEX event_log_keys_by_subject ON event_log_keys (subject);
