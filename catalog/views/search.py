"""The search page: words, a picture or "more like this", and without a query the collection itself."""

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from catalog.accounts.access import can_read, request_user
from catalog.accounts.throttling import throttled_page

from catalog.api.errors import RETRY_AFTER_SECONDS
from catalog.embedder import EmbedderUnavailable
from catalog.forms import SearchForm
from catalog.search import ImageNotFound, SearchBusy, SearchError, images_browse, images_search, stored_image
from catalog.search_input import preview_data_url



# No CSRF token: the POST only carries a query picture and changes nothing, and a token in the
# shared GET form would end up in every search URL. Cross-site POSTs carry no session cookie
# (SameSite=Lax), so with login-only reading they are sent to the login page.
@csrf_exempt
def search_page(request: HttpRequest) -> HttpResponse:
    """Text and "more like this" searches and browsing are GET (shareable URLs); image uploads are POST."""
    user = request_user(request)  # once: for a bearer token it costs a hash and two queries
    if not can_read(user):  # read_required, with the user it found kept for the throttle
        return redirect_to_login(request.get_full_path())
    data = request.POST if request.method == "POST" else request.GET
    # The API's search budget (per user or address), counted before any work: browsing costs a
    # count of the matching images and a page of them, so it counts too.
    refused = throttled_page(request, "search", user=user)
    if refused is not None:
        return refused
    if not data.get("top_k"):
        data = data.copy()
        data["top_k"] = str(SearchForm.base_fields["top_k"].initial)  # so the form shows what was used
    form = SearchForm(data, request.FILES or None)
    if not request.GET and request.method == "GET":
        form.fields["q"].widget.attrs["autofocus"] = True  # the bare start page: typing is the first thing
    context = {"form": form, "results": None, "error": None, "kind": None}
    status = 200
    if form.is_valid():
        cleaned = form.cleaned_data
        context["kind"] = kind = cleaned["kind"]
        try:
            if kind == "browse":
                context["results"] = images_browse(filters=cleaned["filters"], sort=cleaned["sort"] or "added",
                                                   page=cleaned["page"] or 1, per_page=cleaned["top_k"])
            else:
                context["results"] = images_search(params=cleaned["params"])
        except EmbedderUnavailable as error:
            context["error"], status = str(error), 503
        except SearchError as error:  # the same statuses as the API: a missing image is 404, busy 503
            context["error"] = str(error)
            status = 404 if isinstance(error, ImageNotFound) else 503 if isinstance(error, SearchBusy) else 400
        results = context["results"]
        if results is not None and results.hits:
            size = cleaned["top_k"]
            context["first_index"] = (results.page - 1) * size + 1
            context["last_index"] = context["first_index"] + len(results.hits) - 1
        context["region"] = kind in ("image", "similar") and cleaned["params"].region is not None
        if kind == "similar":
            context["reference"] = stored_image(image_id=cleaned["similar_to"])
        elif kind == "image":
            context["preview"] = preview_data_url(cleaned["query_image"])
            context["upload_name"] = cleaned["image"].name
        if request.method == "GET":
            context["page_query"] = _query_without_page(request)  # uploads can't be re-sent by a link
    else:
        status = 503 if form.has_error("image", code="busy") else 400
    response = render(request, "catalog/search.html", context, status=status)
    if status == 503:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _query_without_page(request: HttpRequest) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()
