"""Teams keep only a hash of their API token (and its first characters as a hint)."""

import hashlib

from django.db import migrations, models


def hash_tokens(apps, schema_editor):
    Team = apps.get_model("app", "Team")
    for team in Team.objects.all():
        team.api_token_hash = hashlib.sha256(team.api_token.encode("utf-8")).hexdigest()
        team.api_token_hint = team.api_token[:10]
        team.save(update_fields=["api_token_hash", "api_token_hint"])


class Migration(migrations.Migration):

    dependencies = [
        ("app", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="team",
            name="api_token_hash",
            field=models.CharField(default="", editable=False, max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="team",
            name="api_token_hint",
            field=models.CharField(blank=True, default="", editable=False, max_length=16),
        ),
        migrations.RunPython(hash_tokens, migrations.RunPython.noop),
        migrations.RemoveField(model_name="team", name="api_token"),
        migrations.AlterField(
            model_name="team",
            name="api_token_hash",
            field=models.CharField(editable=False, max_length=64, unique=True),
        ),
    ]
