from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework.generics import ListAPIView, RetrieveAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.accounts.access import IMPORT_PERMISSION
from catalog.accounts.throttling import ScopeThrottle
from catalog.api import imports
from catalog.api.serializers import (ImageListQuerySerializer, ImageSerializer, SearchResponseSerializer,
                                     SimilarQuerySerializer, StrictQueryMixin, search_response)
from catalog.models import Image
from catalog.search import images_search


class ImagePagination(PageNumberPagination):
    page_size = 24
    page_size_query_param = "page_size"
    max_page_size = 100


def _query_params(request: Request) -> dict:
    """Query parameters with list values kept as lists (``?cities=A&cities=B``, ``attr``, ``tag``)."""
    return {key: request.query_params.getlist(key) if key in ("cities", "attr", "tag")
            else request.query_params.get(key)
            for key in request.query_params}


class ImageCollectionView(StrictQueryMixin, ListAPIView):
    serializer_class = ImageSerializer
    pagination_class = ImagePagination
    write_permissions = {"POST": [IMPORT_PERMISSION]}  # reads: the default CanRead
    throttle_classes = [ScopeThrottle]
    # Listing runs a filtered count and a page of rows, like browsing on the search page: one search budget.
    throttle_scopes = {"GET": "search", "HEAD": "search", "POST": "upload"}
    query_serializer_methods = ("GET",)

    def get_queryset(self):
        filters = ImageListQuerySerializer(data=_query_params(self.request), context={"text_input": True})
        filters.is_valid(raise_exception=True)
        return Image.objects.filter(filters.validated_data["filters"].as_q()).order_by("-created_at", "-id")

    @extend_schema(summary="List images, newest first, with metadata filters",
                   parameters=[ImageListQuerySerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(summary="Upload one image or an archive (imported in the background)",
                   request=imports.UPLOAD_REQUEST_SCHEMA, responses={202: imports.UPLOAD_RESPONSE_SCHEMA})
    def post(self, request, *args, **kwargs):
        return imports.image_upload_create(request)


class ImageDetailView(StrictQueryMixin, RetrieveAPIView):
    serializer_class = ImageSerializer
    queryset = Image.objects.all()

    @extend_schema(summary="One image with its metadata")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class SimilarImagesView(StrictQueryMixin, APIView):
    throttle_classes = [ScopeThrottle]
    throttle_scope = "search"
    query_serializer_methods = ("GET",)

    @extend_schema(summary="More like this: images closest to a stored image",
                   parameters=[SimilarQuerySerializer], responses={200: SearchResponseSerializer})
    def get(self, request: Request, pk: int) -> Response:
        get_object_or_404(Image, pk=pk)
        query = SimilarQuerySerializer(data=_query_params(request), context={"similar_to": pk, "text_input": True})
        query.is_valid(raise_exception=True)
        results = images_search(params=query.validated_data["params"])
        return Response(search_response(results, context={"request": request}))
