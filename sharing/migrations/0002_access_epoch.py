"""The access epoch: one row that changes whenever a fact the access rules
read changes (docs/decisions/0002-access.md, "Grants cached between
requests").

- At commit (a deferred constraint trigger, once per transaction) the
  epoch becomes the id of the transaction that changed a consent, a DV
  block, a membership, a guardianship, an account's patient or an MFA
  authenticator. Transaction ids are never reused (a rolled-back one
  included), so an epoch names one committed state of those tables. The
  row is locked only from that trigger to the commit, so writers do not
  queue on it for the length of their transactions.
- At once (a row trigger), the transaction marks itself
  (`hagukumi.access_changed`, a transaction-local setting): its own reads
  see its uncommitted changes while the epoch does not yet say so, so
  they must not trust a cached grant.
- TRUNCATE (manage.py flush) fires no row trigger: it moves the epoch at
  once.
"""

from django.db import migrations

# (table, the row condition for INSERT, UPDATE, DELETE; None: every row)
WATCHED = [
    ("sharing_consent", None, None, None),
    ("sharing_dvblock", None, None, None),
    ("phr_membership", None, None, None),
    ("phr_guardianship", None, None, None),
    # Only an account's own patient is a fact ("own"); municipal imports
    # create account-less residents by the thousand and must not move it.
    (
        "phr_patient",
        "NEW.account_id IS NOT NULL",
        "OLD.account_id IS DISTINCT FROM NEW.account_id",
        "OLD.account_id IS NOT NULL",
    ),
    # A sign-in updates last_used_at; only a new, removed or retyped
    # authenticator changes "has MFA".
    (
        "mfa_authenticator",
        None,
        "OLD.type IS DISTINCT FROM NEW.type OR OLD.user_id IS DISTINCT FROM NEW.user_id",
        None,
    ),
]

FUNCTIONS = """
CREATE TABLE sharing_access_epoch (
    id smallint PRIMARY KEY CHECK (id = 1),
    xact bigint NOT NULL
);
INSERT INTO sharing_access_epoch VALUES (1, txid_current());

CREATE FUNCTION sharing_access_epoch_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sharing_access_epoch SET xact = txid_current()
    WHERE id = 1 AND xact <> txid_current();
    RETURN NULL;
END $$;

CREATE FUNCTION sharing_access_changed_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('hagukumi.access_changed', '1', true);
    RETURN NULL;
END $$;

CREATE FUNCTION sharing_access_epoch_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('hagukumi.access_changed', '1', true);
    UPDATE sharing_access_epoch SET xact = txid_current() WHERE id = 1;
    RETURN NULL;
END $$;
"""

DROP_FUNCTIONS = """
DROP FUNCTION sharing_access_epoch_truncated() CASCADE;
DROP FUNCTION sharing_access_changed_mark() CASCADE;
DROP FUNCTION sharing_access_epoch_bump() CASCADE;
DROP TABLE sharing_access_epoch;
"""


def _triggers(table: str, on_insert: str | None, on_update: str | None, on_delete: str | None):
    sql = []
    for event, condition in (("INSERT", on_insert), ("UPDATE", on_update), ("DELETE", on_delete)):
        when = f" WHEN ({condition})" if condition else ""
        name = f"{table}_access_{event.lower()}"
        sql.append(
            f"CREATE CONSTRAINT TRIGGER {name}_epoch AFTER {event} ON {table} "
            f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW{when} "
            "EXECUTE FUNCTION sharing_access_epoch_bump();"
        )
        sql.append(
            f"CREATE TRIGGER {name}_mark AFTER {event} ON {table} FOR EACH ROW{when} "
            "EXECUTE FUNCTION sharing_access_changed_mark();"
        )
    sql.append(
        f"CREATE TRIGGER {table}_access_truncate AFTER TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION sharing_access_epoch_truncated();"
    )
    return "\n".join(sql)


class Migration(migrations.Migration):
    dependencies = [
        ("sharing", "0001_initial"),
        ("phr", "0005_residency_number_index"),
        ("mfa", "0003_authenticator_type_uniq"),
    ]

    operations = [
        migrations.RunSQL(
            FUNCTIONS + "\n".join(_triggers(*watched) for watched in WATCHED),
            DROP_FUNCTIONS,
        ),
    ]
