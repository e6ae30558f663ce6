"""Manage API tokens: create one for a user (printed once), list them, revoke one by its prefix."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from knox.models import AuthToken

from catalog.accounts import tokens


class Command(BaseCommand):
    help = "API tokens: `tokens create USER [--expires-days N]`, `tokens list [USER]`, `tokens revoke PREFIX`."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Create a token for USER and print it (shown only once).")
        create.add_argument("user")
        create.add_argument("--expires-days", type=int, default=None,
                            help="Days until it expires (default and maximum: IMAGESEARCH_TOKEN_TTL_DAYS).")
        listing = sub.add_parser("list", help="List tokens (prefix, user, created, expiry), of USER if given.")
        listing.add_argument("user", nargs="?")
        revoke = sub.add_parser("revoke", help="Revoke the token(s) with this prefix.")
        revoke.add_argument("prefix")

    def handle(self, *args, action, **options):
        getattr(self, f"_{action}")(**options)

    def _user(self, username):
        try:
            return get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"No user named {username!r}.") from None

    def _create(self, user, expires_days, **_):
        try:
            token, plain = tokens.create_token(user=self._user(user), expires_days=expires_days)
        except tokens.TokenError as error:
            raise CommandError(str(error)) from None
        expiry = token.expiry.isoformat(timespec="seconds") if token.expiry else "never"
        self.stderr.write(f"Token {token.token_key} for {user}, expires {expiry}. It is shown only now:")
        self.stdout.write(plain)

    def _list(self, user=None, **_):
        rows = AuthToken.objects.select_related("user").order_by("user__username", "-created")
        if user:
            rows = rows.filter(user=self._user(user))
        for token in rows:
            expiry = token.expiry.isoformat(timespec="seconds") if token.expiry else "never"
            self.stdout.write(f"{token.token_key}  {token.user.get_username()}  "
                              f"created {token.created.isoformat(timespec='seconds')}  expires {expiry}")

    def _revoke(self, prefix, **_):
        if not tokens.revoke_tokens(prefix=prefix):
            raise CommandError(f"No token with prefix {prefix!r}.")
        self.stdout.write(f"Revoked {prefix}.")
