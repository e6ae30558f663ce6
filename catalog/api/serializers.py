from django.utils.datastructures import MultiValueDict
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from django.utils.translation import gettext as _, gettext_lazy
from rest_framework import serializers

from catalog.models import Image
from catalog.search import MAX_ATTRIBUTE_FILTERS, MAX_ID, MAX_PAGE, MAX_SIDE, MAX_TOP_K, MIN_REGION_SIDE, ORIENTATIONS, SearchBusy, SearchError
from catalog.vector_search import MAX_DEPTH
from catalog.search_input import (build_filters, build_region, build_search_params, decode_base64_image,
                                   decode_query_image)

# Sent by the site's own forms and DRF's format switch; never an unknown field.
ALWAYS_ALLOWED = frozenset({"csrfmiddlewaretoken", "format"})


def check_known(names, known) -> None:
    """Raise a 400 naming every name not in ``known`` (plus ALWAYS_ALLOWED)."""
    unknown = sorted({str(name) for name in names} - set(known) - ALWAYS_ALLOWED)
    if unknown:
        listed = ", ".join(sorted(known)) or _("none")
        raise serializers.ValidationError({name[:100]: [_("Unknown field \"%(name)s\". Known fields: %(known)s.")
                                                        % {"name": name[:100], "known": listed}]
                                           for name in unknown[:20]})


# Refuses input fields it does not declare, naming them: a typo such as "city" for "cities" must not
# silently widen a search. ``extra_fields`` in the context names more allowed ones (e.g. the
# paginator's query parameters). Comments, not a docstring: the schema would show it on every body.
class StrictSerializer(serializers.Serializer):

    def to_internal_value(self, data):
        if hasattr(data, "keys"):
            writable = [name for name, field in self.fields.items() if not field.read_only]
            check_known(data.keys(), [*writable, *self.context.get("extra_fields", ())])
        if isinstance(data, MultiValueDict):  # a form or query string: a single value given twice is refused
            twice = {name: [_("Give \"%(name)s\" once.") % {"name": name}] for name in data
                     if name in self.fields and not isinstance(self.fields[name], serializers.ListField)
                     and len(data.getlist(name)) > 1}
            if twice:
                raise serializers.ValidationError(twice)
        # JSON only: forms (QueryDicts) and query strings carry text.
        if isinstance(data, dict) and not isinstance(data, MultiValueDict) and not self.context.get("text_input"):
            wrong = {name: [message] for name, value in data.items()
                     if name in self.fields and (message := json_type_error(self.fields[name], value))}
            if wrong:
                raise serializers.ValidationError(wrong)
        return super().to_internal_value(data)


# JSON types as the schema states them: DRF would take 5 for "5" and "5" for 5, so a client that
# sends the wrong type would work by accident here and fail against a stricter server.
_JSON_TYPES = ((serializers.BooleanField, bool, gettext_lazy("Expected a boolean, got %(type)s.")),
               (serializers.IntegerField, int, gettext_lazy("Expected an integer, got %(type)s.")),
               (serializers.FloatField, (int, float), gettext_lazy("Expected a number, got %(type)s.")),
               (serializers.ListField, list, gettext_lazy("Expected a list, got %(type)s.")),
               (serializers.CharField, str, gettext_lazy("Expected a string, got %(type)s.")),
               (serializers.DateField, str, gettext_lazy("Expected a date string, got %(type)s.")),
               (serializers.ChoiceField, str, gettext_lazy("Expected a string, got %(type)s.")))


def json_type_error(field, value) -> str | None:
    if value is None:
        return None  # DRF's own "may not be null"
    for kind, types, message in _JSON_TYPES:
        if isinstance(field, kind):
            if not isinstance(value, types) or (isinstance(value, bool) and kind is not serializers.BooleanField):
                return str(message) % {"type": type(value).__name__}
            if kind is serializers.ListField:
                return next((_("Item %(index)d: %(error)s") % {"index": index, "error": error}
                             for index, item in enumerate(value)
                             if (error := json_type_error(field.child, item))), None)
            return None
    return None


# For API views: query parameters are refused (400, named) on every method whose view does not
# validate them with a StrictSerializer itself (``query_serializer_methods``). (Not a docstring:
# the schema would show it as every operation's description.)
class StrictQueryMixin:

    query_serializer_methods: tuple[str, ...] = ()

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # authentication, permissions and throttles first
        method = request.method.lower()
        if hasattr(self, method) and method.upper() not in self.query_serializer_methods:  # else: 405
            check_known(request.query_params.keys(), ())


class ImageFilterSerializer(StrictSerializer):
    """Metadata filters, shared by the image list and every search."""

    cities = serializers.ListField(child=serializers.CharField(max_length=120), required=False, max_length=100,
                                   help_text="Only images from these cities (repeat the parameter for several).")
    min_width = serializers.IntegerField(required=False, min_value=1, max_value=MAX_SIDE)
    max_width = serializers.IntegerField(required=False, min_value=1, max_value=MAX_SIDE)
    min_height = serializers.IntegerField(required=False, min_value=1, max_value=MAX_SIDE)
    max_height = serializers.IntegerField(required=False, min_value=1, max_value=MAX_SIDE)
    taken_from = serializers.DateField(required=False, help_text="Taken on or after this day (UTC).")
    taken_to = serializers.DateField(required=False, help_text="Taken on or before this day (UTC).")
    orientation = serializers.ChoiceField(choices=ORIENTATIONS, required=False)
    attr = serializers.ListField(child=serializers.CharField(max_length=300), required=False,
                                 max_length=MAX_ATTRIBUTE_FILTERS,
                                 help_text="Only images whose attribute equals a value, as name:value (e.g. "
                                           "brand:acme); repeat for several, all must match.")
    tag = serializers.ListField(child=serializers.CharField(max_length=100), required=False,
                                max_length=MAX_ATTRIBUTE_FILTERS,
                                help_text="Only images with this tag; repeat for several, all must match.")

    def validate(self, attrs):
        try:
            attrs["filters"] = build_filters(attrs)
        except SearchError as error:
            raise serializers.ValidationError(str(error)) from None
        return attrs


class ImageListQuerySerializer(ImageFilterSerializer):
    """The image list's query: the filters and the page (the paginator reads them; checked here first)."""

    page = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=100, help_text="Images per page.")


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
        except SearchBusy:
            raise  # a 503 (catalog/api/errors.py), not the input's fault
        except SearchError as error:
            raise serializers.ValidationError(str(error)) from None
        return attrs

    def _query_image(self, attrs):
        return None


@extend_schema_field(OpenApiTypes.BINARY)
class QueryImageField(serializers.FileField):
    """A multipart file: "format: binary" in the schema (DRF's FileField would say URI)."""


class SearchRequestSerializer(SimilarQuerySerializer):
    """A search as JSON: exactly one of ``q``, ``image_base64`` or ``similar_to``."""

    q = serializers.CharField(required=False, allow_blank=True, max_length=500,
                              help_text="Describe the picture, in English or Chinese.")
    image_base64 = serializers.CharField(required=False, help_text="Query picture as base64 (or a data: URL).")
    similar_to = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID,
                                          help_text="Id of a stored image: find images like it.")
    region_x = serializers.FloatField(
        required=False, min_value=0, max_value=1,
        help_text="Search by a box of the query picture (or of similar_to's stored image) instead of all of it: "
                  "its left edge, as a fraction of the upright picture's width (EXIF orientation applied). "
                  "Give all four region fields or none; x + w and y + h at most 1; the box must cover at least "
                  f"{MIN_REGION_SIDE}x{MIN_REGION_SIDE} pixels of the picture. Not with q.")
    region_y = serializers.FloatField(required=False, min_value=0, max_value=1,
                                      help_text="The region's top edge, as a fraction of the picture's height.")
    region_w = serializers.FloatField(required=False, min_value=0, max_value=1,
                                      help_text="The region's width, as a fraction of the picture's width (above 0).")
    region_h = serializers.FloatField(required=False, min_value=0, max_value=1,
                                      help_text="The region's height, as a fraction of the picture's height "
                                                "(above 0).")

    def validate(self, attrs):
        if attrs.get("image") and attrs.get("image_base64"):
            raise serializers.ValidationError(_("Send the query picture once: image or image_base64, not both."))
        return super().validate(attrs)

    def _query_image(self, attrs):
        if attrs.get("image"):
            return decode_query_image(attrs["image"].read(), region=build_region(attrs))
        if attrs.get("image_base64"):
            return decode_base64_image(attrs["image_base64"], region=build_region(attrs))
        return None


class SearchUploadRequestSerializer(SearchRequestSerializer):
    """A search as a multipart form: exactly one of ``q``, ``image``, ``image_base64`` or ``similar_to``."""

    image = QueryImageField(required=False, help_text="Query picture (a file).")


class ImageSerializer(serializers.ModelSerializer):
    image_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()
    video = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True,
                                               help_text="A key frame of a video: the video's id (else null).")
    video_time = serializers.FloatField(read_only=True, allow_null=True,
                                        help_text="A key frame's time in its video, in seconds (else null).")

    class Meta:
        model = Image
        fields = ["id", "original_name", "title", "width", "height", "city", "group_key", "tags", "attributes",
                  "taken_at", "latitude",
                  "longitude", "source", "status", "created_at", "image_url", "thumbnail_url", "video", "video_time"]
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
    depth_limit_reached = serializers.BooleanField(
        help_text=f"More results exist past the deepest page served ({MAX_DEPTH} results); narrow the search to see them.")
    timing = SearchTimingSerializer()


def search_response(results, *, context) -> dict:
    return {
        "results": SearchHitSerializer(results.hits, many=True, context=context).data,
        "page": results.page,
        "has_next": results.has_next,
        "depth_limit_reached": results.depth_limit_reached,
        "timing": {"encode_ms": round(results.encode_ms, 2), "database_ms": round(results.database_ms, 2)},
    }
