"""The audit log: partitioned by month, INSERT-only.

- Partitioned by month on occurred_at (old months can be detached and
  archived); a DEFAULT partition catches anything outside the prepared
  months so that an insert never fails. phr.audit.audit_maintain_partitions
  creates months ahead.
- A trigger refuses UPDATE, DELETE and TRUNCATE for everyone, the owner
  included; only a superuser who first disables the trigger can change a row,
  and the seals (phr.audit) then show it.
- The application role (settings.APP_DB_ROLE, created here when we may)
  gets SELECT and INSERT on the audit table and nothing else there.
"""

from django.conf import settings
from django.db import migrations

CREATE = """
CREATE TABLE phr_auditevent (
    id bigint GENERATED ALWAYS AS IDENTITY,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_id bigint NULL,
    actor_role varchar(32) NOT NULL DEFAULT '',
    organization_id bigint NULL,
    patient_id uuid NULL,
    action varchar(64) NOT NULL,
    categories varchar(32)[] NOT NULL DEFAULT '{}',
    purpose varchar(16) NOT NULL DEFAULT '',
    outcome varchar(16) NOT NULL,
    break_glass boolean NOT NULL DEFAULT false,
    request_id varchar(64) NOT NULL DEFAULT '',
    detail jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (occurred_at, id)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE phr_auditevent_default PARTITION OF phr_auditevent DEFAULT;
-- serves the family's access history: one patient's events, newest first
CREATE INDEX phr_audit_patient ON phr_auditevent (patient_id, occurred_at DESC);
-- serves sealing and verification: rows in id order within an interval
CREATE INDEX phr_audit_id ON phr_auditevent (id);

CREATE FUNCTION phr_audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER phr_audit_no_update_delete BEFORE UPDATE OR DELETE ON phr_auditevent
    FOR EACH ROW EXECUTE FUNCTION phr_audit_refuse_change();
CREATE TRIGGER phr_audit_no_truncate BEFORE TRUNCATE ON phr_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION phr_audit_refuse_change();
"""

DROP = """
DROP TABLE IF EXISTS phr_auditevent CASCADE;
DROP FUNCTION IF EXISTS phr_audit_refuse_change();
"""


def grant_app_role(apps, schema_editor):
    role = settings.APP_DB_ROLE
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            """
            DO $$
            BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) THEN
                    EXECUTE format('CREATE ROLE %%I NOLOGIN', %s);
                END IF;
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE 'cannot create role %%; the DBA creates it', %s;
            END $$;
            """,
            [role, role, role],
        )
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        if cursor.fetchone() is None:
            return
        quoted = schema_editor.quote_name(role)
        cursor.execute(f"GRANT USAGE ON SCHEMA public TO {quoted}")
        cursor.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted}"
        )
        cursor.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {quoted}")
        cursor.execute(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {quoted}"
        )
        cursor.execute(
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {quoted}"
        )
        # The point of the role: the audit log can be appended to and read,
        # never changed. Partitions inherit nothing, so revoke on each.
        cursor.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relname = 'phr_auditevent' "
            "OR c.oid IN (SELECT inhrelid FROM pg_inherits "
            "WHERE inhparent = 'phr_auditevent'::regclass)"
        )
        for (table,) in cursor.fetchall():
            cursor.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM {quoted}")
            cursor.execute(f"GRANT SELECT, INSERT ON {table} TO {quoted}")


class Migration(migrations.Migration):
    dependencies = [("phr", "0001_initial")]

    operations = [
        migrations.RunSQL(CREATE, DROP),
        migrations.RunPython(grant_app_role, migrations.RunPython.noop),
    ]
