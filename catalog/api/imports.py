"""Import jobs over the API: start one from URLs or uploaded files (images or zip/tar archives),
then follow its progress. The work happens in the background worker."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.accounts.access import IMPORT_PERMISSION, may_cancel_import, visible_import_jobs
from catalog.accounts.permissions import CanRead
from catalog.accounts.throttling import ScopeThrottle
from catalog.api.parsers import API_PARSERS
from catalog.api.serializers import StrictQueryMixin, StrictSerializer
from catalog.jobs import requests as jobs
from catalog.models import ImportJob

RECENT_JOBS = 50


# --------------------------------------------------------------------------
# input


class ImportUrlField(serializers.CharField):
    def __init__(self, **kwargs):
        super().__init__(max_length=jobs.MAX_URL_LENGTH, **kwargs)

    def to_internal_value(self, data):
        try:
            return jobs.validate_url(super().to_internal_value(data))
        except jobs.ImportRequestError as error:
            raise serializers.ValidationError(str(error)) from None


@extend_schema_field(OpenApiTypes.BINARY)
class UploadField(serializers.FileField):
    def __init__(self, **kwargs):
        # An empty file is not a request error: the job records it as a failed item.
        super().__init__(allow_empty_file=True, use_url=False, **kwargs)

    def to_internal_value(self, data):
        try:
            return jobs.validate_upload(super().to_internal_value(data))
        except jobs.ImportRequestError as error:
            raise serializers.ValidationError(str(error)) from None


@extend_schema_field(OpenApiTypes.BINARY)
class ManifestField(serializers.FileField):
    def __init__(self, **kwargs):
        super().__init__(allow_empty_file=True, use_url=False, **kwargs)

    def to_internal_value(self, data):
        try:
            return jobs.validate_manifest(super().to_internal_value(data))
        except jobs.ImportRequestError as error:
            raise serializers.ValidationError(str(error)) from None


class ImportMetadataSerializer(StrictSerializer):
    city = serializers.CharField(max_length=120, required=False, allow_blank=True, default="",
                                 help_text="City for every image of this import (else taken from GPS).")
    group_key = serializers.CharField(max_length=120, required=False, allow_blank=True, default="",
                                      help_text="Group key (e.g. a product id) for every image of this import.")


class ImageUploadSerializer(ImportMetadataSerializer):
    file = serializers.ListField(
        child=UploadField(), min_length=1,
        help_text="An image, a video (MP4, MOV, WebM, MKV: its key frames are imported), or a zip / tar / "
                  "tar.gz archive of them. Repeat the field for several files.")


class ImportUrlsSerializer(ImportMetadataSerializer):
    urls = serializers.ListField(child=ImportUrlField(), allow_empty=False,
                                 help_text="http(s) URLs of images or videos.")

    def validate_urls(self, urls):
        try:
            return jobs.check_url_count(urls)  # each URL was checked by ImportUrlField already
        except jobs.ImportRequestError as error:
            raise serializers.ValidationError(str(error)) from None


class ImportCreateSerializer(ImportUrlsSerializer):
    """URLs (JSON or multipart) and/or files (multipart); at least one of them."""

    urls = serializers.ListField(child=ImportUrlField(), required=False, allow_empty=True,
                                 help_text="http(s) URLs of images or videos.")
    file = serializers.ListField(child=UploadField(), required=False, allow_empty=True,
                                 help_text="Images, videos or zip / tar / tar.gz archives (an archive may hold manifest.csv "
                                           "or manifest.jsonl at its root). Repeat the field for several.")
    manifest = ManifestField(required=False,
                             help_text="A CSV or JSON Lines manifest: one image URL per row with its own metadata "
                                       "(city, group_key, taken_at, title, tags, attributes). Bad rows become "
                                       "failed items (\"line 7: ...\"); the rest import.")

    def validate(self, attrs):
        if not attrs.get("urls") and not attrs.get("file") and not attrs.get("manifest"):
            raise serializers.ValidationError(_("Give at least one URL in \"urls\" or upload a \"file\"."))
        return attrs


# --------------------------------------------------------------------------
# output


class ImportCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField(help_text="Items known so far (an archive counts as its members once "
                                               "the worker has opened it).")
    done = serializers.IntegerField(help_text="Items processed: added + duplicates + failed.")
    added = serializers.IntegerField()
    duplicates = serializers.IntegerField(help_text="Items whose bytes were stored already.")
    failed = serializers.IntegerField()


class ImportErrorSerializer(serializers.Serializer):
    item = serializers.CharField(help_text="File name, archive member or URL file name.")
    source = serializers.CharField(help_text="Where the item came from (URL, archive:member, upload name).")
    message = serializers.CharField()


class ImportJobSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    url = serializers.SerializerMethodField()
    state = serializers.ChoiceField(choices=ImportJob.State.choices)
    city = serializers.CharField()
    group_key = serializers.CharField()
    counts = serializers.SerializerMethodField()
    percent = serializers.IntegerField()
    error = serializers.CharField(help_text="Why the job as a whole failed (state \"failed\"); else empty.")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, job: ImportJob) -> str:
        path = reverse("catalog:api-import-detail", args=[job.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path

    @extend_schema_field(ImportCountsSerializer)
    def get_counts(self, job: ImportJob) -> dict:
        return {"total": job.total, "done": job.done, "added": job.added, "duplicates": job.duplicates,
                "failed": job.failed}


class ImportJobSerializer(ImportJobSummarySerializer):
    errors = serializers.SerializerMethodField(
        help_text=f"Per-item errors, oldest first (at most {jobs.MAX_ERRORS_SHOWN}; counts.failed is exact).")

    @extend_schema_field(ImportErrorSerializer(many=True))
    def get_errors(self, job: ImportJob) -> list[dict]:
        return jobs.job_errors(job)


UPLOAD_REQUEST_SCHEMA = {"multipart/form-data": ImageUploadSerializer}
UPLOAD_RESPONSE_SCHEMA = ImportJobSerializer


def _accepted(request: Request, job: ImportJob) -> Response:
    data = ImportJobSerializer(job, context={"request": request}).data
    return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["url"]})


# --------------------------------------------------------------------------
# views


class ImportCollectionView(StrictQueryMixin, APIView):
    parser_classes = API_PARSERS
    permission_classes = [IsAuthenticated, CanRead]
    write_permissions = {"POST": [IMPORT_PERMISSION]}
    throttle_classes = [ScopeThrottle]
    throttle_scopes = {"POST": "upload"}

    @extend_schema(summary="Recent import jobs, newest first", responses={200: ImportJobSummarySerializer(many=True)})
    def get(self, request: Request) -> Response:
        recent = visible_import_jobs(user=request.user).order_by("-created_at")[:RECENT_JOBS]
        return Response(ImportJobSummarySerializer(recent, many=True, context={"request": request}).data)

    @extend_schema(
        summary="Start an import from URLs and/or uploaded files (runs in the background)",
        request={"application/json": ImportUrlsSerializer, "multipart/form-data": ImportCreateSerializer},
        responses={202: ImportJobSerializer},
        examples=[OpenApiExample("URLs", request_only=True, media_type="application/json",
                                 value={"urls": ["https://example.com/a.jpg"], "city": "Lisbon",
                                        "group_key": "sku-42"})])
    def post(self, request: Request) -> Response:
        serializer = ImportCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        job = jobs.create_job(files=data.get("file") or (), urls=data.get("urls") or (), city=data["city"],
                              group_key=data["group_key"], via=ImportJob.Via.API, created_by=request.user,
                              manifest=data.get("manifest"))
        return _accepted(request, job)


class ImportDetailView(StrictQueryMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="An import job: state, counts and per-item errors", responses={200: ImportJobSerializer})
    def get(self, request: Request, pk) -> Response:
        job = get_object_or_404(visible_import_jobs(user=request.user), pk=pk)
        return Response(ImportJobSerializer(job, context={"request": request}).data)


class ImportCancelView(StrictQueryMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="Cancel an unfinished import job: workers take none of its items any more",
                   description="What it added stays. Cancelling a finished job changes nothing; the answer is "
                               "the job either way. Allowed to whoever started the job and to editors of imports.",
                   request=None, responses={200: ImportJobSerializer})
    def post(self, request: Request, pk) -> Response:
        job = get_object_or_404(visible_import_jobs(user=request.user), pk=pk)
        if not may_cancel_import(user=request.user, job=job):
            raise PermissionDenied(_("Only whoever started an import, or an editor of imports, may cancel it."))
        jobs.cancel_job(job.pk)
        job.refresh_from_db()
        return Response(ImportJobSerializer(job, context={"request": request}).data)


def image_upload_create(request: Request) -> Response:
    """POST /api/images/: one uploaded image (or archive) becomes an import job."""
    serializer = ImageUploadSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    job = jobs.create_job(files=data["file"], city=data["city"], group_key=data["group_key"], via=ImportJob.Via.API,
                          created_by=request.user)
    return _accepted(request, job)
