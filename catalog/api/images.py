from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework.generics import ListAPIView, RetrieveAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.api import imports
from catalog.api.serializers import (ImageFilterSerializer, ImageSerializer, SearchResponseSerializer,
                                     SimilarQuerySerializer, search_response)
from catalog.models import Image
from catalog.search import images_search


class ImagePagination(PageNumberPagination):
    page_size = 24
    page_size_query_param = "page_size"
    max_page_size = 100


def _query_params(request: Request) -> dict:
    """Query parameters with list values kept as lists (``?cities=A&cities=B``)."""
    return {key: request.query_params.getlist(key) if key == "cities" else request.query_params.get(key)
            for key in request.query_params}


class ImageCollectionView(ListAPIView):
    serializer_class = ImageSerializer
    pagination_class = ImagePagination

    def get_queryset(self):
        filters = ImageFilterSerializer(data=_query_params(self.request))
        filters.is_valid(raise_exception=True)
        return Image.objects.filter(filters.validated_data["filters"].as_q()).order_by("-created_at", "-id")

    @extend_schema(summary="List images, newest first, with metadata filters",
                   parameters=[ImageFilterSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(summary="Upload one image or an archive (imported in the background)",
                   request=imports.UPLOAD_REQUEST_SCHEMA, responses={202: imports.UPLOAD_RESPONSE_SCHEMA})
    def post(self, request, *args, **kwargs):
        return imports.image_upload_create(request)


class ImageDetailView(RetrieveAPIView):
    serializer_class = ImageSerializer
    queryset = Image.objects.all()

    @extend_schema(summary="One image with its metadata")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class SimilarImagesView(APIView):
    @extend_schema(summary="More like this: images closest to a stored image",
                   parameters=[SimilarQuerySerializer], responses={200: SearchResponseSerializer})
    def get(self, request: Request, pk: int) -> Response:
        get_object_or_404(Image, pk=pk)
        query = SimilarQuerySerializer(data=_query_params(request), context={"similar_to": pk})
        query.is_valid(raise_exception=True)
        results = images_search(params=query.validated_data["params"])
        return Response(search_response(results, context={"request": request}))
