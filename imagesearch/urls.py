from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from catalog.accounts import passwords
from catalog.accounts.throttling import throttle_posts
from catalog.views.media import serve_media

urlpatterns = [
    # Login POSTs count in the API token login's budget per address (axes only locks username + address).
    # Listed before admin/ so it takes the admin's own login URL; reverse("admin:login") still points here.
    path("admin/login/", throttle_posts("login")(admin.site.login)),
    # Old-password guesses count in the login budget too; a changed password revokes the user's tokens.
    path("admin/password_change/", throttle_posts("login")(admin.site.admin_view(passwords.admin_password_change))),
    path("admin/", admin.site.urls),
    path("accounts/login/", throttle_posts("login")(auth_views.LoginView.as_view(redirect_authenticated_user=True)),
         name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password/", throttle_posts("login")(passwords.PasswordChangeView.as_view()),
         name="password_change"),
    path("accounts/password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("i18n/", include("django.conf.urls.i18n")),  # set_language: the language switch in every page's header
    path("", include("catalog.urls")),
]



handler400 = "catalog.request_input.bad_request"
handler403 = "catalog.request_input.forbidden"
handler404 = "catalog.request_input.not_found"
handler500 = "imagesearch.middleware.server_error"  # 503 while the database is down


if settings.SERVE_MEDIA and settings.MEDIA_URL.startswith("/"):
    urlpatterns += [re_path(rf"^{settings.MEDIA_URL.strip('/')}/(?P<path>.*)$", serve_media)]
