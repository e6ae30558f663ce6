from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from catalog.models import Image
from catalog.search import MAX_PAGE, MAX_TOP_K, ORIENTATIONS, SearchError
from catalog.search_input import build_filters, build_search_params, decode_base64_image, decode_query_image


class ImageFilterSerializer(serializers.Serializer):
    """Metadata filters, shared by the image list and every search."""

    cities = serializers.ListField(child=serializers.CharField(max_length=120), required=False, max_length=100,
                                   help_text="Only images from these cities (repeat the parameter for several).")
    min_width = serializers.IntegerField(required=False, min_value=1)
    max_width = serializers.IntegerField(required=False, min_value=1)
    min_height = serializers.IntegerField(required=False, min_value=1)
    max_height = serializers.IntegerField(required=False, min_value=1)
    taken_from = serializers.DateField(required=False, help_text="Taken on or after this day (UTC).")
    taken_to = serializers.DateField(required=False, help_text="Taken on or before this day (UTC).")
    orientation = serializers.ChoiceField(choices=ORIENTATIONS, required=False)

    def validate(self, attrs):
        try:
            attrs["filters"] = build_filters(attrs)
        except SearchError as error:
            raise serializers.ValidationError(str(error)) from None
        return attrs


class SimilarQuerySerializer(ImageFilterSerializer):
    top_k = serializers.IntegerField(required=False, min_value=1, max_value=MAX_TOP_K, default=20)
    page = serializers.IntegerField(required=False, min_value=1, max_value=MAX_PAGE, default=1)
    min_score = serializers.FloatField(required=False, min_value=-1, max_value=1)
    collapse = serializers.BooleanField(required=False, default=False,
                                        help_text="At most one result per group key.")

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if "similar_to" in self.context:  # from the URL of /api/images/{id}/similar/
            attrs["similar_to"] = self.context["similar_to"]
        try:
            attrs["params"] = build_search_params(attrs, image=self._query_image(attrs))
        except SearchError as error:
            raise serializers.ValidationError(str(error)) from None
        return attrs

    def _query_image(self, attrs):
        return None


class SearchRequestSerializer(SimilarQuerySerializer):
    """Exactly one of ``q``, ``image``, ``image_base64`` or ``similar_to``."""

    q = serializers.CharField(required=False, allow_blank=True, max_length=500,
                              help_text="Describe the picture, in English or Chinese.")
    image = serializers.FileField(required=False, help_text="Query picture (multipart upload).")
    image_base64 = serializers.CharField(required=False, help_text="Query picture as base64 (or a data: URL).")
    similar_to = serializers.IntegerField(required=False, min_value=1,
                                          help_text="Id of a stored image: find images like it.")

    def validate(self, attrs):
        if attrs.get("image") and attrs.get("image_base64"):
            raise serializers.ValidationError("Send the query picture once: image or image_base64, not both.")
        return super().validate(attrs)

    def _query_image(self, attrs):
        if attrs.get("image"):
            return decode_query_image(attrs["image"].read())
        if attrs.get("image_base64"):
            return decode_base64_image(attrs["image_base64"])
        return None


class ImageSerializer(serializers.ModelSerializer):
    image_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = ["id", "original_name", "width", "height", "city", "group_key", "taken_at", "latitude",
                  "longitude", "source", "status", "created_at", "image_url", "thumbnail_url"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.URI)
    def get_image_url(self, image: Image) -> str:
        return self._absolute(image.file.url)

    @extend_schema_field(OpenApiTypes.URI)
    def get_thumbnail_url(self, image: Image) -> str:
        return self._absolute(image.thumbnail_url)

    def _absolute(self, url: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url


class SearchHitSerializer(ImageSerializer):
    """An image plus its score (the schema is ImageSerializer's fields and ``score``)."""

    score = serializers.FloatField(read_only=True, help_text="Cosine similarity, -1..1; higher is closer.")

    class Meta(ImageSerializer.Meta):
        fields = ["score", *ImageSerializer.Meta.fields]
        read_only_fields = fields

    def to_representation(self, hit):
        data = ImageSerializer(hit.image, context=self.context).data
        return {"score": round(hit.score, 6), **data}


class SearchTimingSerializer(serializers.Serializer):
    encode_ms = serializers.FloatField()
    database_ms = serializers.FloatField()


class SearchResponseSerializer(serializers.Serializer):
    results = SearchHitSerializer(many=True)
    page = serializers.IntegerField()
    has_next = serializers.BooleanField()
    timing = SearchTimingSerializer()


def search_response(results, *, context) -> dict:
    return {
        "results": SearchHitSerializer(results.hits, many=True, context=context).data,
        "page": results.page,
        "has_next": results.has_next,
        "timing": {"encode_ms": round(results.encode_ms, 2), "database_ms": round(results.database_ms, 2)},
    }
