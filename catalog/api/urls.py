from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from catalog.api import auth, images, imports, search, spaces

urlpatterns = [
    path("search/", search.SearchView.as_view(), name="api-search"),
    path("images/", images.ImageCollectionView.as_view(), name="api-images"),
    path("images/<int:pk>/", images.ImageDetailView.as_view(), name="api-image-detail"),
    path("images/<int:pk>/similar/", images.SimilarImagesView.as_view(), name="api-image-similar"),
    path("imports/", imports.ImportCollectionView.as_view(), name="api-imports"),
    path("imports/<uuid:pk>/", imports.ImportDetailView.as_view(), name="api-import-detail"),
    path("imports/<uuid:pk>/cancel/", imports.ImportCancelView.as_view(), name="api-import-cancel"),
    path("spaces/", spaces.EmbeddingSpaceListView.as_view(), name="api-spaces"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its script as a file: the Content-Security-Policy allows no inline scripts.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="catalog:api-schema"), name="api-docs"),
    path("auth/token/", auth.TokenCreateView.as_view(), name="api-auth-token"),
    path("auth/tokens/", auth.TokenListView.as_view(), name="api-auth-tokens"),
    path("auth/tokens/<str:prefix>/", auth.TokenDetailView.as_view(), name="api-auth-token-detail"),
    path("auth/logout/", auth.TokenLogoutView.as_view(), name="api-auth-logout"),
]
