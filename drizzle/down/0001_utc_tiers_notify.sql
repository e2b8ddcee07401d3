-- Reverts 0001_utc_tiers_notify.
DROP TRIGGER IF EXISTS "usage_limits_notify" ON "usage_limits";
--> statement-breakpoint
DROP TRIGGER IF EXISTS "users_tier_notify" ON "users";
--> statement-breakpoint
DROP FUNCTION IF EXISTS "quota_notify_change"();
--> statement-breakpoint
DELETE FROM "usage_limits" WHERE "tier" IN ('free', 'pro', 'enterprise')
  AND NOT EXISTS (SELECT 1 FROM "users" WHERE "users"."tier" = "usage_limits"."tier");
--> statement-breakpoint
DO $$ BEGIN
  EXECUTE format('ALTER DATABASE %I RESET timezone', current_database());
END $$;
