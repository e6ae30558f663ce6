"""Embedding spaces over the API: which model serves searches, and the progress of a build
(coverage of the collection). Changing them is done with ``manage.py models`` or the admin."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog import spaces
from catalog.accounts.permissions import CanRead
from catalog.api.serializers import StrictQueryMixin
from catalog.models import EmbeddingSpace


class EmbeddingSpaceSerializer(serializers.Serializer):
    name = serializers.CharField(source="space.name")
    state = serializers.ChoiceField(source="space.state", choices=EmbeddingSpace.State.choices)
    architecture = serializers.CharField(source="space.architecture")
    pretrained = serializers.CharField(source="space.pretrained")
    random_init = serializers.BooleanField(source="space.random_init")
    dimensions = serializers.IntegerField(source="space.dimensions")
    vectors = serializers.IntegerField()
    missing = serializers.IntegerField(help_text="Images without a vector in this space.")
    coverage = serializers.FloatField(help_text="Percent of the images embedded in this space (100: complete).")
    index_bytes = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(source="space.error", help_text="Why the last build run stopped, if it failed.")
    activated_at = serializers.DateTimeField(source="space.activated_at", allow_null=True)


class EmbeddingSpaceListView(StrictQueryMixin, APIView):
    permission_classes = [IsAuthenticated, CanRead]

    @extend_schema(summary="Embedding spaces (one per model): state and build progress",
                   responses={200: EmbeddingSpaceSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(EmbeddingSpaceSerializer(spaces.space_statuses(), many=True).data)
