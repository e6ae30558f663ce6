"""DRF permission classes: reads follow PUBLIC_READ, writes need a user with the Django permission
named per method on the view (``write_permissions = {"POST": [...]}``)."""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission

from catalog.accounts.access import can_read


class CanRead(BasePermission):
    """Reading: anyone when IMAGESEARCH_PUBLIC_READ is on, else any logged-in user.
    Writes on a view that names no permission for the method are refused."""

    message = "Log in to use this API (session or \"Authorization: Bearer <token>\")."

    def has_permission(self, request, view) -> bool:
        if not hasattr(view, request.method.lower()):
            return True  # no such operation: DRF answers 405, the same for everyone
        if request.method in SAFE_METHODS or request.method in getattr(view, "read_methods", ()):
            return can_read(request.user)
        needed = getattr(view, "write_permissions", {}).get(request.method)
        if needed is None:
            return False
        if not request.user.is_authenticated:
            return False  # DRF answers 401 for an anonymous caller
        if not request.user.has_perms(needed):
            self.message = f"You need the permission(s) {', '.join(needed)} for this."
            return False
        return True
