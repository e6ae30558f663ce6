from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from catalog.accounts.access import can_read, request_user
from catalog.accounts.throttling import throttled_page

from catalog.embedder import EmbedderUnavailable
from catalog.forms import SearchForm
from catalog.search import ImageNotFound, SearchError, images_search

QUERY_FIELDS = ("q", "similar_to")


# No CSRF token: the POST only carries a query picture and changes nothing, and a token in the
# shared GET form would end up in every search URL. Cross-site POSTs carry no session cookie
# (SameSite=Lax), so with login-only reading they are sent to the login page.
@csrf_exempt
def search_page(request: HttpRequest) -> HttpResponse:
    """Text and "more like this" searches are GET (shareable URLs); image uploads are POST."""
    user = request_user(request)  # once: for a bearer token it costs a hash and two queries
    if not can_read(user):  # read_required, with the user it found kept for the throttle
        return redirect_to_login(request.get_full_path())
    data = request.POST if request.method == "POST" else request.GET
    has_query = any(data.get(name, "").strip() for name in QUERY_FIELDS) or "image" in request.FILES
    submitted = has_query or "search" in data
    if submitted:  # the API's search budget (per user or address), counted before any work, as there
        refused = throttled_page(request, "search", user=user)
        if refused is not None:
            return refused
    if submitted and not data.get("top_k"):
        data = data.copy()
        data["top_k"] = str(SearchForm.base_fields["top_k"].initial)  # so the form shows what was used
    form = SearchForm(data if submitted else None, request.FILES if submitted else None)
    context = {"form": form, "results": None, "error": None}
    status = 200
    if submitted and form.is_valid():
        try:
            context["results"] = images_search(params=form.cleaned_data["params"])
        except EmbedderUnavailable as error:
            context["error"], status = str(error), 503
        except SearchError as error:  # the same statuses as the API: a missing image is 404
            context["error"], status = str(error), 404 if isinstance(error, ImageNotFound) else 400
        if context["results"] is not None and request.method == "GET":
            context["page_query"] = _query_without_page(request)  # uploads can't be re-sent by a link
    elif submitted:
        status = 400
    return render(request, "catalog/search.html", context, status=status)


def _query_without_page(request: HttpRequest) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()
