-- Reverts 0006_partition_daily_usage: daily_usage becomes one plain table again, with every row of
-- every partition (the DEFAULT one included), and the same columns, defaults, primary key, foreign
-- key and index as before 0006. Partitions that retention (HISTORY_RETENTION_MONTHS) dropped are
-- gone already; nothing else is lost. Runs in one transaction; keys are built after the copy.
CREATE TABLE "daily_usage_plain" (
	"user_id" uuid NOT NULL,
	"date" date NOT NULL,
	"deployments_created" bigint DEFAULT 0 NOT NULL,
	"api_calls" bigint DEFAULT 0 NOT NULL,
	"compute_hours" numeric DEFAULT '0' NOT NULL,
	"storage_gb" numeric DEFAULT '0' NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"version" bigint DEFAULT 0 NOT NULL
);
--> statement-breakpoint
INSERT INTO "daily_usage_plain" ("user_id", "date", "deployments_created", "api_calls", "compute_hours", "storage_gb", "updated_at", "version")
  SELECT "user_id", "date", "deployments_created", "api_calls", "compute_hours", "storage_gb", "updated_at", "version"
    FROM "daily_usage";
--> statement-breakpoint
-- Drops the parent and every partition with it.
DROP TABLE "daily_usage";
--> statement-breakpoint
ALTER TABLE "daily_usage_plain" RENAME TO "daily_usage";
--> statement-breakpoint
ALTER TABLE "daily_usage" ADD CONSTRAINT "daily_usage_pkey" PRIMARY KEY ("user_id", "date");
--> statement-breakpoint
ALTER TABLE "daily_usage" ADD CONSTRAINT "daily_usage_user_id_fkey" FOREIGN KEY ("user_id") REFERENCES "public"."users"("id") ON DELETE cascade ON UPDATE no action;
--> statement-breakpoint
CREATE INDEX "daily_usage_date_api_calls_idx" ON "daily_usage" USING btree ("date","api_calls" DESC NULLS LAST);
