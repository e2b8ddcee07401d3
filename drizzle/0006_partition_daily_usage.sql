-- Hand-written (drizzle-kit generate --custom): drizzle's schema.ts cannot declare a partitioned
-- table, so src/db/schema.ts keeps describing daily_usage's columns, key, foreign key and index,
-- and this file turns the table into one range-partitioned by month on "date" (docs/scaling.md).
-- Same name, columns, types, defaults, primary key (user_id, date), foreign key and index: the
-- ON CONFLICT (user_id, date) upserts and the spec's SQL run unchanged.
--
-- Every row is kept. The migration runner applies this file in one transaction: the old table is
-- renamed, the partitioned parent created, a partition made for each month that holds rows and
-- for the current month and the next three, plus a DEFAULT partition (an insert never fails for a
-- month without its partition); the rows are copied, and the old table dropped. Keys and the
-- index are built after the copy (one build per partition, not one insert per index entry).
-- Partition names are daily_usage_YYYY_MM, as src/db/partitions.ts makes them later.
ALTER TABLE "daily_usage" RENAME TO "daily_usage_unpartitioned";
--> statement-breakpoint
ALTER TABLE "daily_usage_unpartitioned" RENAME CONSTRAINT "daily_usage_pkey" TO "daily_usage_unpartitioned_pkey";
--> statement-breakpoint
ALTER INDEX "daily_usage_date_api_calls_idx" RENAME TO "daily_usage_unpartitioned_date_api_calls_idx";
--> statement-breakpoint
CREATE TABLE "daily_usage" (
	"user_id" uuid NOT NULL,
	"date" date NOT NULL,
	"deployments_created" bigint DEFAULT 0 NOT NULL,
	"api_calls" bigint DEFAULT 0 NOT NULL,
	"compute_hours" numeric DEFAULT '0' NOT NULL,
	"storage_gb" numeric DEFAULT '0' NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"version" bigint DEFAULT 0 NOT NULL
) PARTITION BY RANGE ("date");
--> statement-breakpoint
CREATE TABLE "daily_usage_default" PARTITION OF "daily_usage" DEFAULT;
--> statement-breakpoint
DO $$
DECLARE
  this_month date := date_trunc('month', (now() AT TIME ZONE 'UTC'))::date;
  first_day date;
BEGIN
  FOR first_day IN
    SELECT DISTINCT date_trunc('month', "date")::date FROM "daily_usage_unpartitioned"
    UNION
    SELECT (this_month + make_interval(months => n))::date FROM generate_series(0, 3) AS n
    ORDER BY 1
  LOOP
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF "daily_usage" FOR VALUES FROM (%L) TO (%L)',
      'daily_usage_' || to_char(first_day, 'YYYY_MM'), first_day, (first_day + interval '1 month')::date);
  END LOOP;
END $$;
--> statement-breakpoint
INSERT INTO "daily_usage" ("user_id", "date", "deployments_created", "api_calls", "compute_hours", "storage_gb", "updated_at", "version")
  SELECT "user_id", "date", "deployments_created", "api_calls", "compute_hours", "storage_gb", "updated_at", "version"
    FROM "daily_usage_unpartitioned";
--> statement-breakpoint
DROP TABLE "daily_usage_unpartitioned";
--> statement-breakpoint
ALTER TABLE "daily_usage" ADD CONSTRAINT "daily_usage_pkey" PRIMARY KEY ("user_id", "date");
--> statement-breakpoint
ALTER TABLE "daily_usage" ADD CONSTRAINT "daily_usage_user_id_fkey" FOREIGN KEY ("user_id") REFERENCES "public"."users"("id") ON DELETE cascade ON UPDATE no action;
--> statement-breakpoint
-- Serves the spec's "WHERE date = CURRENT_DATE ORDER BY api_calls DESC LIMIT 10", in each partition.
CREATE INDEX "daily_usage_date_api_calls_idx" ON "daily_usage" USING btree ("date","api_calls" DESC NULLS LAST);
