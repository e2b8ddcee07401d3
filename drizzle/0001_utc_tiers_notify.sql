-- CURRENT_DATE is the UTC day in every new session on this database: the service's and an
-- operator's psql running the spec's queries alike.
DO $$ BEGIN
  EXECUTE format('ALTER DATABASE %I SET timezone TO %L', current_database(), 'UTC');
END $$;
--> statement-breakpoint
-- The tiers of DESIGN.md 1.6; NULL = unlimited.
INSERT INTO "usage_limits" ("tier", "max_deployments_per_day", "max_api_calls_per_day", "max_compute_hours_per_day", "max_storage_gb") VALUES
  ('free', 10, 5000, 10, 5),
  ('pro', 50, 50000, 100, 100),
  ('enterprise', NULL, NULL, NULL, NULL)
ON CONFLICT ("tier") DO NOTHING;
--> statement-breakpoint
-- Every change to a user's tier or to tier limits, through the API or by plain SQL, is announced
-- on channel quota_changes; each service process LISTENs and drops its cached copy.
CREATE OR REPLACE FUNCTION "quota_notify_change"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_TABLE_NAME = 'users' THEN
    IF TG_OP = 'DELETE' THEN
      PERFORM pg_notify('quota_changes', 'user:' || OLD.id::text);
    ELSE
      PERFORM pg_notify('quota_changes', 'user:' || NEW.id::text);
    END IF;
  ELSE
    PERFORM pg_notify('quota_changes', 'limits');
  END IF;
  RETURN NULL;
END $$;
--> statement-breakpoint
CREATE TRIGGER "users_tier_notify" AFTER UPDATE OF "tier" OR DELETE ON "users"
  FOR EACH ROW EXECUTE FUNCTION "quota_notify_change"();
--> statement-breakpoint
CREATE TRIGGER "usage_limits_notify" AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON "usage_limits"
  FOR EACH STATEMENT EXECUTE FUNCTION "quota_notify_change"();
