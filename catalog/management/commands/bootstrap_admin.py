"""First start: make sure someone can log in. If no superuser exists, create "admin" with a random
password and print it once (only its hash is stored); otherwise do nothing."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create the first superuser with a one-time random password (printed once) if there is none."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username, **options):
        User = get_user_model()
        if User.objects.filter(is_superuser=True, is_active=True).exists():
            return
        if User.objects.filter(username=username).exists():
            raise CommandError(f"No active superuser, and a user named {username!r} exists already: "
                               f"run `manage.py createsuperuser` to make one.")
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        bar = "=" * 72
        self.stdout.write(f"{bar}\nCreated the administrator account (shown only this once, not stored):\n"
                          f"    user:     {username}\n    password: {password}\n"
                          f"Log in at /accounts/login/ and change it under \"Password\" (or `manage.py "
                          f"changepassword {username}`).\n{bar}")
