from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from catalog.api import images, imports, search

urlpatterns = [
    path("search/", search.SearchView.as_view(), name="api-search"),
    path("images/", images.ImageCollectionView.as_view(), name="api-images"),
    path("images/<int:pk>/", images.ImageDetailView.as_view(), name="api-image-detail"),
    path("images/<int:pk>/similar/", images.SimilarImagesView.as_view(), name="api-image-similar"),
    path("imports/", imports.ImportCollectionView.as_view(), name="api-imports"),
    path("imports/<uuid:pk>/", imports.ImportDetailView.as_view(), name="api-import-detail"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="catalog:api-schema"), name="api-docs"),
]
