from django.contrib import admin
from django.utils.html import format_html

from catalog.models import Embedding, EmbeddingSpace, Image


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["preview", "original_name", "city", "width", "height", "taken_at", "status", "source",
                    "created_at"]
    list_display_links = ["preview", "original_name"]
    list_filter = ["status", "source", "city"]
    search_fields = ["original_name", "=sha256", "group_key"]
    readonly_fields = ["preview_large", "sha256", "width", "height", "taken_at", "latitude", "longitude",
                       "source", "source_ref", "created_at", "status", "status_reason"]
    fields = ["preview_large", "original_name", "city", "group_key", "file", "thumbnail", "sha256", "width",
              "height", "taken_at", "latitude", "longitude", "source", "source_ref", "created_at", "status",
              "status_reason"]
    date_hierarchy = "created_at"
    list_per_page = 50

    @admin.display(description="Preview")
    def preview(self, image: Image):
        return format_html('<img src="{}" alt="" style="height:64px;max-width:96px;object-fit:cover">',
                           image.thumbnail_url)

    @admin.display(description="Preview")
    def preview_large(self, image: Image):
        return format_html('<img src="{}" alt="" style="max-height:320px">', image.thumbnail_url)


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


# --- Import jobs ----------------------------------------------------------------------------------
from django.contrib import messages  # noqa: E402
from django.shortcuts import redirect  # noqa: E402
from django.template.response import TemplateResponse  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils.html import format_html_join  # noqa: E402

from catalog.ingest import jobs as import_jobs  # noqa: E402
from catalog.models import ImportJob  # noqa: E402

ADMIN_ERRORS_SHOWN = 200


@admin.register(ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    """Lists import jobs; "add" uploads files or URLs into a new job (run by the background worker)."""

    list_display = ["created_at", "state", "progress", "added", "duplicates", "failed", "created_via", "city",
                    "group_key", "finished_at"]
    list_display_links = ["created_at"]
    list_filter = ["state", "created_via"]
    search_fields = ["=id", "city", "group_key"]
    date_hierarchy = "created_at"
    readonly_fields = ["id", "state", "page_link", "progress", "total", "added", "duplicates", "failed", "error",
                       "item_errors", "city", "group_key", "created_via", "attempts", "lease_owner",
                       "lease_expires_at", "created_at", "started_at", "finished_at"]
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

    @admin.action(description="Retry selected failed imports")
    def retry(self, request, queryset):
        retried = sum(import_jobs.retry_job(job_id) for job_id in queryset.values_list("pk", flat=True))
        self.message_user(request, f"{retried} import(s) queued again.")

    def has_change_permission(self, request, obj=None):
        return False  # jobs are changed by their worker only

    def has_delete_permission(self, request, obj=None):
        # A running job's worker would stop mid-way; let it finish first.
        return super().has_delete_permission(request, obj) and (obj is None or obj.is_finished)

    def add_view(self, request, form_url="", extra_context=None):
        from catalog.views.imports import ImportForm

        if not self.has_add_permission(request):
            return redirect("admin:index")
        form = ImportForm(request.POST, request.FILES) if request.method == "POST" else ImportForm()
        if request.method == "POST" and form.is_valid():
            job = form.create_job(ImportJob.Via.ADMIN)
            self.message_user(request, "Import queued; the background worker is processing it.", messages.SUCCESS)
            return redirect("admin:catalog_importjob_change", job.pk)
        context = {**self.admin_site.each_context(request), "title": "Start an import", "form": form,
                   "opts": self.model._meta, **(extra_context or {})}
        return TemplateResponse(request, "catalog/imports/admin_add.html", context)
