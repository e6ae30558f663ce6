"""What a locked-out login attempt gets (django-axes calls this): the API's JSON error shape
under /api/, the login page with the message elsewhere; both 429 with Retry-After."""

from __future__ import annotations

from django.shortcuts import render
from django.utils.translation import ngettext


def lockout_response(request, original_response=None, credentials=None):
    from axes.helpers import get_cool_off

    from catalog.api.errors import error_response
    from catalog.request_input import is_api

    seconds = int(get_cool_off(request).total_seconds())
    minutes = max(1, round(seconds / 60))
    message = ngettext("Too many failed logins for this user from this address; try again in %(minutes)d minute.",
                       "Too many failed logins for this user from this address; try again in %(minutes)d minutes.",
                       minutes) % {"minutes": minutes}
    if is_api(request):
        response = error_response(429, "locked_out", message)
    else:
        from django.contrib.auth.forms import AuthenticationForm

        # Unbound: validating the posted form would try the password once more.
        form = AuthenticationForm(request, initial={"username": request.POST.get("username", "")})
        response = render(request, "registration/login.html",
                          {"form": form, "lockout": message, "next": request.POST.get("next", "")}, status=429)
    response["Retry-After"] = str(seconds)
    return response
