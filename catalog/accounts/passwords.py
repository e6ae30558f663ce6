"""Password changes: a changed password revokes the user's API tokens, and the old-password field
is throttled like a login form (it is one: a guess of the current password)."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.forms import AdminPasswordChangeForm
from django.contrib.auth import views as auth_views
from django.urls import reverse

from catalog.accounts.tokens import revoke_user_tokens


class PasswordChangeView(auth_views.PasswordChangeView):
    def form_valid(self, form):
        response = super().form_valid(form)
        revoke_user_tokens(user=form.user)  # tokens made with the old password must not outlive it
        return response


def admin_password_change(request):
    """The admin's own "change password" page: AdminSite.password_change, with the view above."""
    request.current_app = admin.site.name
    view = PasswordChangeView.as_view(form_class=AdminPasswordChangeForm,
                                      success_url=reverse("admin:password_change_done", current_app=admin.site.name),
                                      extra_context=admin.site.each_context(request))
    return view(request)
