CREATE TABLE "usage_events" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "usage_events_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"user_id" uuid NOT NULL,
	"metric" text NOT NULL,
	"date" date NOT NULL,
	"threshold" smallint NOT NULL,
	"current" numeric NOT NULL,
	"limit" numeric NOT NULL,
	"created_at" timestamp with time zone NOT NULL,
	"rearmed_at" timestamp with time zone,
	"attempts" integer DEFAULT 0 NOT NULL,
	"next_attempt_at" timestamp with time zone DEFAULT now() NOT NULL,
	"delivered_at" timestamp with time zone,
	"last_error" text,
	"gave_up_at" timestamp with time zone,
	CONSTRAINT "usage_events_threshold" CHECK ("usage_events"."threshold" in (80, 100))
);
--> statement-breakpoint
ALTER TABLE "usage_events" ADD CONSTRAINT "usage_events_user_id_fkey" FOREIGN KEY ("user_id") REFERENCES "public"."users"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "usage_events_live_key" ON "usage_events" USING btree ("date","user_id","metric","threshold") WHERE "usage_events"."rearmed_at" IS NULL;--> statement-breakpoint
CREATE UNIQUE INDEX "usage_events_crossing_key" ON "usage_events" USING btree ("user_id","metric","date","threshold","created_at");--> statement-breakpoint
CREATE INDEX "usage_events_due_idx" ON "usage_events" USING btree ("next_attempt_at") WHERE "usage_events"."delivered_at" IS NULL AND "usage_events"."gave_up_at" IS NULL;