"""Read access for pages, API and media files, and which import jobs a user may see."""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.db.models import QuerySet
from rest_framework import exceptions
from rest_framework.request import Request

from catalog.models import ImportJob

# Django permissions for each kind of write (the admin assigns them to users and groups).
IMPORT_PERMISSION = "catalog.add_importjob"  # uploads, URL and archive imports
RETRY_PERMISSION = "catalog.change_importjob"
SEE_ALL_JOBS_PERMISSION = "catalog.view_importjob"


def can_read(user) -> bool:
    return settings.PUBLIC_READ or bool(user and user.is_authenticated)


def request_user(request):
    """The session user, else the user of a valid ``Authorization: Bearer`` token (plain Django
    views such as media files are fetched by API clients too), else the anonymous user."""
    if request.user.is_authenticated:
        return request.user
    from catalog.accounts.authentication import BearerTokenAuthentication

    try:
        found = BearerTokenAuthentication().authenticate(Request(request))
    except exceptions.AuthenticationFailed:
        found = None
    return found[0] if found else request.user


def read_required(view):
    """Page/file views: anonymous visitors go to the login page unless reading is public."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not can_read(request_user(request)):
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapper


def may_cancel_import(*, user, job: ImportJob) -> bool:
    """Whoever started the job, or an editor of imports (who may retry them too)."""
    return user.is_authenticated and (job.created_by_id == user.pk or user.has_perm(RETRY_PERMISSION))


def visible_import_jobs(*, user) -> QuerySet[ImportJob]:
    """Jobs a user may follow: their own; every job with the view permission."""
    if not user.is_authenticated:
        return ImportJob.objects.none()
    if user.has_perm(SEE_ALL_JOBS_PERMISSION):
        return ImportJob.objects.all()
    return ImportJob.objects.filter(created_by=user)
