-- Reverts 0003_admin_audit: drops the audit trail (and every row of it).
DROP TABLE IF EXISTS "admin_audit";
