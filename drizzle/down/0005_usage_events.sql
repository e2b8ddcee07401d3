-- Reverts 0005_usage_events: drops the threshold events and their delivery state (every row of
-- them; the index and the identity sequence go with the table). Crossings the counter store still
-- holds are copied again by a release that has the table.
DROP TABLE IF EXISTS "usage_events";
