"""Import jobs over the API. (Being written for the ingestion-at-scale issue.)"""

from rest_framework.views import APIView


class ImportCollectionView(APIView):
    pass


class ImportDetailView(APIView):
    pass


# Used by catalog/api/images.py to document POST /api/images/ (keep these names):
UPLOAD_REQUEST_SCHEMA = None   # request serializer (multipart) for a single image/archive upload
UPLOAD_RESPONSE_SCHEMA = None  # response serializer: the created import job


def image_upload_create(request):
    """POST /api/images/: one uploaded image (or archive) becomes an import job."""
    raise NotImplementedError
