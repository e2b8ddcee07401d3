ALTER TABLE "daily_usage" ALTER COLUMN "deployments_created" SET DATA TYPE bigint;--> statement-breakpoint
ALTER TABLE "daily_usage" ALTER COLUMN "api_calls" SET DATA TYPE bigint;