-- Reverts 0002_widen_daily_counts. Fails (and changes nothing) if a row holds a count above 2^31-1.
ALTER TABLE "daily_usage" ALTER COLUMN "deployments_created" SET DATA TYPE integer;
--> statement-breakpoint
ALTER TABLE "daily_usage" ALTER COLUMN "api_calls" SET DATA TYPE integer;
