CREATE TABLE "daily_usage" (
	"user_id" uuid NOT NULL,
	"date" date NOT NULL,
	"deployments_created" integer DEFAULT 0 NOT NULL,
	"api_calls" integer DEFAULT 0 NOT NULL,
	"compute_hours" numeric DEFAULT '0' NOT NULL,
	"storage_gb" numeric DEFAULT '0' NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"version" bigint DEFAULT 0 NOT NULL,
	CONSTRAINT "daily_usage_pkey" PRIMARY KEY("user_id","date")
);
--> statement-breakpoint
CREATE TABLE "scheduler_runs" (
	"job" text NOT NULL,
	"day" date NOT NULL,
	"ran_at" timestamp with time zone DEFAULT now() NOT NULL,
	"detail" text,
	CONSTRAINT "scheduler_runs_pkey" PRIMARY KEY("job","day")
);
--> statement-breakpoint
CREATE TABLE "usage_limits" (
	"tier" text PRIMARY KEY NOT NULL,
	"max_deployments_per_day" integer,
	"max_api_calls_per_day" integer,
	"max_compute_hours_per_day" numeric,
	"max_storage_gb" numeric,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "usage_limits_non_negative" CHECK (coalesce("usage_limits"."max_deployments_per_day", 0) >= 0
      and coalesce("usage_limits"."max_api_calls_per_day", 0) >= 0
      and coalesce("usage_limits"."max_compute_hours_per_day", 0) >= 0
      and coalesce("usage_limits"."max_storage_gb", 0) >= 0)
);
--> statement-breakpoint
CREATE TABLE "users" (
	"id" uuid PRIMARY KEY NOT NULL,
	"username" text NOT NULL,
	"tier" text DEFAULT 'free' NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "users_username_key" UNIQUE("username")
);
--> statement-breakpoint
ALTER TABLE "daily_usage" ADD CONSTRAINT "daily_usage_user_id_fkey" FOREIGN KEY ("user_id") REFERENCES "public"."users"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "users" ADD CONSTRAINT "users_tier_fkey" FOREIGN KEY ("tier") REFERENCES "public"."usage_limits"("tier") ON DELETE no action ON UPDATE cascade;--> statement-breakpoint
CREATE INDEX "daily_usage_date_api_calls_idx" ON "daily_usage" USING btree ("date","api_calls" DESC NULLS LAST);