-- Reverts 0004_idempotency_records: drops the copies of idempotent answers. Keys stay honoured
-- while Redis keeps them; only a Redis loss within their 24 h would then count a retry again.
DROP TABLE IF EXISTS "idempotency_records";
