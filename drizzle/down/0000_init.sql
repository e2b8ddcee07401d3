-- Reverts 0000_init: drops every table it created (and their data).
DROP TABLE IF EXISTS "daily_usage";
--> statement-breakpoint
DROP TABLE IF EXISTS "scheduler_runs";
--> statement-breakpoint
DROP TABLE IF EXISTS "users";
--> statement-breakpoint
DROP TABLE IF EXISTS "usage_limits";
