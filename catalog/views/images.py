from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from catalog.accounts.access import read_required
from catalog.embedder import EmbedderUnavailable
from catalog.models import Image
from catalog.search import SearchError, similar_images

DETAIL_NEIGHBOURS = 12


@read_required
def image_detail(request: HttpRequest, pk: int) -> HttpResponse:
    image = get_object_or_404(Image, pk=pk)
    neighbours, note = [], ""
    try:
        neighbours = similar_images(image_id=image.pk, top_k=DETAIL_NEIGHBOURS)
    except (SearchError, EmbedderUnavailable) as error:
        note = str(error)
    return render(request, "catalog/detail.html", {"image": image, "neighbours": neighbours, "note": note})
