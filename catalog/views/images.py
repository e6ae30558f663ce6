"""An image's page: the picture, its metadata and its nearest neighbours."""

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from catalog.accounts.access import can_read, request_user
from catalog.accounts.throttling import throttle_wait, too_many_requests
from catalog.embedder import EmbedderUnavailable
from catalog.models import Image
from catalog.search import SearchError, similar_images

DETAIL_NEIGHBOURS = 12


def image_detail(request: HttpRequest, pk: int) -> HttpResponse:
    user = request_user(request)  # once: kept for the throttle (read_required would look it up again)
    if not can_read(user):
        return redirect_to_login(request.get_full_path())
    image = get_object_or_404(Image, pk=pk)
    neighbours, note, status = [], "", 200
    # The neighbours are a vector search: counted in the search budget like /?similar_to=. Over it,
    # the page still shows the picture and its metadata, without neighbours, as a 429.
    wait = throttle_wait(request, "search", user=user)
    if wait is not None:
        note, status = too_many_requests(wait), 429
    else:
        try:
            neighbours = similar_images(image_id=image.pk, top_k=DETAIL_NEIGHBOURS)
        except (SearchError, EmbedderUnavailable) as error:
            note = str(error)
    response = render(request, "catalog/detail.html", {"image": image, "neighbours": neighbours, "note": note},
                      status=status)
    if wait is not None:
        response["Retry-After"] = str(wait)
    return response
