from django.contrib import admin, messages
from django.db.models import Case, FloatField, Value, When
from django.utils.html import format_html

from catalog.embedder import EmbedderUnavailable
from catalog.search import SearchError, SearchParams, images_search

from catalog.models import Embedding, EmbeddingSpace, Image


SEMANTIC_PREFIX = "~"
ADMIN_SEMANTIC_TOP_K = 100


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["preview", "original_name", "city", "width", "height", "taken_at", "status", "source",
                    "added_by", "created_at"]
    list_display_links = ["preview", "original_name"]
    list_filter = ["status", "source", "city"]
    search_fields = ["original_name", "=sha256", "group_key"]
    search_help_text = (f'Name, SHA-256 or group key. Start with "{SEMANTIC_PREFIX}" to search by description '
                        f'(e.g. "{SEMANTIC_PREFIX} red car at night"), best matches first.')
    # Files are content-addressed and written by the import pipeline only (Import jobs → Add).
    readonly_fields = ["preview_large", "file", "thumbnail", "sha256", "width", "height", "taken_at", "latitude",
                       "longitude", "source", "source_ref", "added_by", "created_at", "status", "status_reason"]
    fields = ["preview_large", "original_name", "city", "group_key", "file", "thumbnail", "sha256", "width",
              "height", "taken_at", "latitude", "longitude", "source", "source_ref", "added_by", "created_at",
              "status", "status_reason"]
    list_select_related = ["added_by"]
    date_hierarchy = "created_at"
    list_per_page = 50

    def has_add_permission(self, request):
        return False

    @admin.display(description="Preview")
    def preview(self, image: Image):
        return format_html('<img src="{}" alt="" style="height:64px;max-width:96px;object-fit:cover">',
                           image.thumbnail_url)

    @admin.display(description="Preview")
    def preview_large(self, image: Image):
        return format_html('<img src="{}" alt="" style="max-height:320px">', image.thumbnail_url)

    # "~ words" runs the site's search (the same function as the pages and the API): the changelist
    # then holds its best matches, best first, still narrowed by the list filters.
    def get_queryset(self, request):
        text = _semantic_text(request)
        if text is None:
            return super().get_queryset(request)
        try:
            hits = images_search(params=SearchParams(text=text, top_k=ADMIN_SEMANTIC_TOP_K)).hits if text else []
        except (SearchError, EmbedderUnavailable) as error:
            self.message_user(request, str(error), level=messages.ERROR)
            hits = []
        scores = [When(pk=hit.image.pk, then=Value(hit.score)) for hit in hits]
        return (Image.objects.filter(pk__in=[hit.image.pk for hit in hits])
                .annotate(search_score=Case(*scores, default=Value(-2.0), output_field=FloatField()))
                .order_by("-search_score"))

    def get_search_results(self, request, queryset, search_term):
        if _semantic_text(request) is not None:
            return queryset, False  # already narrowed by get_queryset
        return super().get_search_results(request, queryset, search_term)

    def get_ordering(self, request):
        return ["-search_score"] if _semantic_text(request) is not None else super().get_ordering(request)


def _semantic_text(request) -> str | None:
    term = request.GET.get("q", "")
    return term[len(SEMANTIC_PREFIX):].strip() if term.startswith(SEMANTIC_PREFIX) else None


@admin.register(EmbeddingSpace)
class EmbeddingSpaceAdmin(admin.ModelAdmin):
    list_display = ["name", "dimensions", "created_at"]
    readonly_fields = ["name", "dimensions", "created_at"]

    def has_add_permission(self, request):
        return False


@admin.register(Embedding)
class EmbeddingAdmin(admin.ModelAdmin):
    list_display = ["image", "space", "created_at"]
    list_filter = ["space"]
    raw_id_fields = ["image"]
    readonly_fields = ["image", "space", "created_at"]
    exclude = ["vector"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # Vectors are derived from their image: whoever may delete images may delete them with it.
        return request.user.has_perm("catalog.delete_image")


# --- Import jobs ----------------------------------------------------------------------------------
from django.contrib import messages  # noqa: E402
from django.core.exceptions import PermissionDenied  # noqa: E402
from django.shortcuts import redirect  # noqa: E402
from django.template.response import TemplateResponse  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils.html import format_html_join  # noqa: E402

from catalog.accounts.access import RETRY_PERMISSION  # noqa: E402
from catalog.accounts.throttling import throttled_page  # noqa: E402
from catalog.jobs import requests as import_jobs  # noqa: E402
from catalog.models import ImportJob  # noqa: E402

ADMIN_ERRORS_SHOWN = 200


@admin.register(ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    """Lists import jobs; "add" uploads files or URLs into a new job (run by the background worker)."""

    list_display = ["created_at", "state", "progress", "added", "duplicates", "failed", "created_via", "created_by",
                    "city", "group_key", "finished_at"]
    list_select_related = ["created_by"]
    list_display_links = ["created_at"]
    list_filter = ["state", "created_via"]
    search_fields = ["=id", "city", "group_key"]
    date_hierarchy = "created_at"
    readonly_fields = ["id", "state", "page_link", "progress", "total", "added", "duplicates", "failed", "error",
                       "item_errors", "city", "group_key", "created_via", "created_by", "attempts", "created_at",
                       "started_at", "finished_at"]
    fields = readonly_fields
    actions = ["retry"]

    @admin.display(description="Progress")
    def progress(self, job: ImportJob) -> str:
        return f"{job.done} / {job.total}"

    @admin.display(description="Import page")
    def page_link(self, job: ImportJob):
        url = reverse("catalog:import-detail", args=[job.pk])
        return format_html('<a href="{}">{}</a>', url, url)

    @admin.display(description="Per-item errors")
    def item_errors(self, job: ImportJob):
        errors = import_jobs.job_errors(job, limit=ADMIN_ERRORS_SHOWN)
        if not errors:
            return "—"
        return format_html("<ul>{}</ul>", format_html_join(
            "", "<li>{} ({}): {}</li>", ((e["item"], e["source"], e["message"]) for e in errors)))

    @admin.action(description="Retry selected failed imports", permissions=["retry"])
    def retry(self, request, queryset):
        retried = sum(import_jobs.retry_job(job_id) for job_id in queryset.values_list("pk", flat=True))
        self.message_user(request, f"{retried} import(s) queued again.")

    def has_change_permission(self, request, obj=None):
        return False  # jobs are changed by their worker only

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm(RETRY_PERMISSION)

    def has_delete_permission(self, request, obj=None):
        # A running job's worker would stop mid-way; let it finish first.
        return super().has_delete_permission(request, obj) and (obj is None or obj.is_finished)

    def add_view(self, request, form_url="", extra_context=None):
        from catalog.views.imports import ImportForm

        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method == "POST" and (refused := throttled_page(request, "upload")):
            return refused
        form = ImportForm(request.POST, request.FILES) if request.method == "POST" else ImportForm()
        if request.method == "POST" and form.is_valid():
            job = form.create_job(ImportJob.Via.ADMIN, created_by=request.user)
            self.message_user(request, "Import queued; the background worker is processing it.", messages.SUCCESS)
            return redirect("admin:catalog_importjob_change", job.pk)
        context = {**self.admin_site.each_context(request), "title": "Start an import", "form": form,
                   "opts": self.model._meta, **(extra_context or {})}
        return TemplateResponse(request, "catalog/imports/admin_add.html", context)


# --- API tokens -----------------------------------------------------------------------------------
from knox.admin import AuthTokenAdmin  # noqa: E402
from knox.models import AuthToken  # noqa: E402

admin.site.unregister(AuthToken)


@admin.register(AuthToken)
class ApiTokenAdmin(AuthTokenAdmin):
    """knox's admin (its add form makes a token and shows it once), listing prefixes, never digests."""

    list_display = ["token_key", "user", "created", "expiry"]
    list_select_related = ["user"]
    search_fields = ["token_key", "user__username"]
    readonly_fields = ["token_key", "user", "created", "expiry"]

    def get_fields(self, request, obj=None):
        return ["user", "expiry"] if obj is None else self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        super(AuthTokenAdmin, self).save_model(request, obj, form, change)
        if not change:
            self.message_user(request, f"New API token for {obj.user} (copy it now, it is not shown again): "
                                       f"{form.token}", messages.WARNING)
