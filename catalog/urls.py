from django.urls import include, path

from catalog.views import images, imports, search

app_name = "catalog"

urlpatterns = [
    path("", search.search_page, name="search"),
    path("images/<int:pk>/", images.image_detail, name="image-detail"),
    path("imports/", imports.import_page, name="imports"),
    path("imports/<uuid:pk>/", imports.import_detail, name="import-detail"),
    path("imports/<uuid:pk>/cancel/", imports.import_cancel, name="import-cancel"),
    path("api/", include("catalog.api.urls")),
]
