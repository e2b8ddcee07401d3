CREATE TABLE "admin_audit" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"at" timestamp with time zone DEFAULT now() NOT NULL,
	"actor" uuid,
	"action" text NOT NULL,
	"target" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"outcome" text NOT NULL,
	"detail" jsonb,
	CONSTRAINT "admin_audit_action" CHECK ("admin_audit"."action" in ('manual-reset', 'set-tier', 'update-limits')),
	CONSTRAINT "admin_audit_outcome" CHECK ("admin_audit"."outcome" in ('ok', 'partial', 'error', 'not-found'))
);
--> statement-breakpoint
CREATE INDEX "admin_audit_at_idx" ON "admin_audit" USING btree ("at");--> statement-breakpoint
CREATE INDEX "admin_audit_actor_at_idx" ON "admin_audit" USING btree ("actor","at");