from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.accounts.throttling import ScopeThrottle
from catalog.api.parsers import API_PARSERS
from catalog.api.serializers import (SearchRequestSerializer, SearchResponseSerializer, SearchUploadRequestSerializer,
                                     StrictQueryMixin, search_response)
from catalog.search import images_search


class SearchView(StrictQueryMixin, APIView):
    parser_classes = API_PARSERS
    read_methods = ("POST",)  # a search changes nothing: CanRead treats it as a read
    throttle_classes = [ScopeThrottle]
    throttle_scope = "search"
    error_statuses = (404,)  # similar_to names a missing image

    @extend_schema(
        summary="Search images by text, by picture or by a stored image (or a region of either picture)",
        request={"application/json": SearchRequestSerializer, "multipart/form-data": SearchUploadRequestSerializer},
        responses={200: SearchResponseSerializer},
        examples=[OpenApiExample("Text", value={"q": "snow-covered peaks in the sun", "top_k": 10,
                                                "cities": ["Zurich"]}, request_only=True),
                  OpenApiExample("Chinese", value={"q": "一只毛茸茸的小狗在草地上奔跑"}, request_only=True),
                  OpenApiExample("More like this", value={"similar_to": 42, "min_score": 0.2},
                                 request_only=True),
                  OpenApiExample("A region of a stored image", value={"similar_to": 42, "region_x": 0.5,
                                                                      "region_y": 0.25, "region_w": 0.5,
                                                                      "region_h": 0.5}, request_only=True)],
    )
    def post(self, request: Request) -> Response:
        upload = request.content_type.startswith("multipart/")
        serializer = (SearchUploadRequestSerializer if upload else SearchRequestSerializer)(data=request.data)
        serializer.is_valid(raise_exception=True)
        results = images_search(params=serializer.validated_data["params"])
        return Response(search_response(results, context={"request": request}))
