import posixpath

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.http import Http404
from django.views.static import serve

from catalog.accounts.access import read_required
from catalog.accounts.throttling import throttle_posts

urlpatterns = [
    # Login POSTs count in the API token login's budget per address (axes only locks username + address).
    # Listed before admin/ so it takes the admin's own login URL; reverse("admin:login") still points here.
    path("admin/login/", throttle_posts("login")(admin.site.login)),
    path("admin/", admin.site.urls),
    path("accounts/login/", throttle_posts("login")(auth_views.LoginView.as_view(redirect_authenticated_user=True)),
         name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("i18n/", include("django.conf.urls.i18n")),  # set_language: the language switch in every page's header
    path("", include("catalog.urls")),
]



# Stored pictures only: nothing else under MEDIA_ROOT (import payloads in imports/, whatever a
# bucket or an operator put there) is served, and nothing is served as anything but an image.
SERVED_MEDIA_FOLDERS = ("images/", "thumbnails/")
# Our own table, not mimetypes: the system's tables differ between machines. No SVG (it can carry script).
MEDIA_CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
                       "gif": "image/gif", "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff",
                       "heic": "image/heic", "heif": "image/heif"}


@read_required  # same rule as the pages: public only when IMAGESEARCH_PUBLIC_READ is on
def serve_media(request, path):
    path = posixpath.normpath(path).lstrip("/")  # as serve() will: "images/../imports/..." is not an image
    content_type = MEDIA_CONTENT_TYPES.get(path.rsplit(".", 1)[-1].lower()) if "." in path else None
    if not path.startswith(SERVED_MEDIA_FOLDERS) or content_type is None:
        raise Http404("No such picture.")
    # MEDIA_ROOT is read per request (not bound at import) so it always follows the settings.
    response = serve(request, path, document_root=settings.MEDIA_ROOT)
    if response.status_code == 200:
        response["Content-Type"] = content_type
    response["X-Content-Type-Options"] = "nosniff"
    return response


handler400 = "catalog.request_input.bad_request"
handler403 = "catalog.request_input.forbidden"
handler404 = "catalog.request_input.not_found"
handler500 = "imagesearch.middleware.server_error"  # 503 while the database is down


if settings.SERVE_MEDIA and settings.MEDIA_URL.startswith("/"):
    urlpatterns += [re_path(rf"^{settings.MEDIA_URL.strip('/')}/(?P<path>.*)$", serve_media)]
