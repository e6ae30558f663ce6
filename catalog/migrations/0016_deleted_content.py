# Tombstones of content deleted in the app (catalog.models.DeletedContent), honoured by manage.py watch.

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0015_browse_indexes'),
    ]

    operations = [
        migrations.CreateModel(
            name='DeletedContent',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('sha256', models.CharField(editable=False, max_length=64, verbose_name='SHA-256')),
                ('original_name', models.CharField(blank=True, max_length=255, verbose_name='original name')),
                ('deleted_at', models.DateTimeField(default=django.utils.timezone.now, verbose_name='deleted at')),
            ],
            options={
                'verbose_name': 'deleted content',
                'verbose_name_plural': 'deleted content',
                'ordering': ['-deleted_at', '-id'],
                'constraints': [models.UniqueConstraint(fields=('sha256',), name='deleted_content_sha256_unique'), models.CheckConstraint(condition=models.Q(('sha256__regex', '^[0-9a-f]{64}$')), name='deleted_content_sha256_hex')],
            },
        ),
    ]
