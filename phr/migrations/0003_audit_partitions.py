"""Create this month's and the next months' audit partitions right away, so
rows go to monthly partitions (not DEFAULT) from the first day."""

from django.db import migrations


def create_partitions(apps, schema_editor):
    from phr.audit import audit_maintain_partitions

    audit_maintain_partitions(months_ahead=3)


class Migration(migrations.Migration):
    dependencies = [("phr", "0002_audit")]

    operations = [migrations.RunPython(create_partitions, migrations.RunPython.noop)]
