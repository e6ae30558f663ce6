from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.api.serializers import SearchRequestSerializer, SearchResponseSerializer, search_response
from catalog.search import images_search


class SearchView(APIView):
    parser_classes = [JSONParser, MultiPartParser, FormParser]
    # Read-only: no session/CSRF needed, so mobile clients can POST freely.
    authentication_classes: list = []

    @extend_schema(
        summary="Search images by text, by picture or by a stored image",
        request={"application/json": SearchRequestSerializer, "multipart/form-data": SearchRequestSerializer},
        responses={200: SearchResponseSerializer},
        examples=[OpenApiExample("Text", value={"q": "snow-covered peaks in the sun", "top_k": 10,
                                                "cities": ["Zurich"]}, request_only=True),
                  OpenApiExample("Chinese", value={"q": "一只毛茸茸的小狗在草地上奔跑"}, request_only=True),
                  OpenApiExample("More like this", value={"similar_to": 42, "min_score": 0.2},
                                 request_only=True)],
    )
    def post(self, request: Request) -> Response:
        serializer = SearchRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        results = images_search(params=serializer.validated_data["params"])
        return Response(search_response(results, context={"request": request}))
