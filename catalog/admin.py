import json

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm
from django.core.exceptions import PermissionDenied
from django.db.models import Case, FloatField, Value, When
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import format_lazy
from django.utils.translation import gettext, gettext_lazy as _, ngettext
from knox.admin import AuthTokenAdmin
from knox.models import AuthToken

from catalog.accounts import tokens
from catalog.accounts.access import RETRY_PERMISSION
from catalog.accounts.throttling import throttled_page
from catalog.embedder import EmbedderUnavailable
from catalog.jobs import requests as import_jobs
from catalog.models import Embedding, EmbeddingSpace, EvaluationRun, Image, ImportJob, Video
from catalog.search import SearchError, SearchParams, images_search

SEMANTIC_PREFIX = "~"
ADMIN_SEMANTIC_TOP_K = 100


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["preview", "original_name", "city", "width", "height", "taken_at", "status", "source",
                    "added_by", "created_at"]
    list_display_links = ["preview", "original_name"]
    list_filter = ["status", "source", "city"]
    search_fields = ["original_name", "=sha256", "group_key"]
    search_help_text = format_lazy(_('Name, SHA-256 or group key. Start with "{prefix}" to search by description '
                                     '(e.g. "{prefix} red car at night"), best matches first.'), prefix=SEMANTIC_PREFIX)
    # Files are content-addressed and written by the import pipeline only (Import jobs → Add).
    readonly_fields = ["preview_large", "file", "thumbnail", "sha256", "width", "height", "taken_at", "latitude",
                       "longitude", "source", "source_ref", "added_by", "created_at", "status", "status_reason",
                       "tags", "attributes",  # from manifests (import again to change them)
                       "video", "video_time"]
    fields = ["preview_large", "original_name", "title", "city", "group_key", "tags", "attributes", "file",
              "thumbnail", "sha256", "width",
              "height", "taken_at", "latitude", "longitude", "source", "source_ref", "added_by", "created_at",
              "status", "status_reason", "video", "video_time"]
    list_select_related = ["added_by"]
    date_hierarchy = "created_at"
    list_per_page = 50

    def has_add_permission(self, request):
        return False

    # Deleting an image removes its stored files too (catalog/derived_files.py), not only its row.
    def delete_model(self, request, obj):
        from catalog.derived_files import delete_images

        delete_images(Image.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        from catalog.derived_files import delete_images

        delete_images(queryset)

    @admin.display(description=_("Preview"))
    def preview(self, image: Image):
        return format_html('<img src="{}" alt="" style="height:64px;max-width:96px;object-fit:cover">',
                           image.thumbnail_url)

    @admin.display(description=_("Preview"))
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


@admin.register(Video)
class VideoAdmin(admin.ModelAdmin):
    """Videos whose key frames are images; read-only. Deleting one deletes its frames with their
    files (as deleting images does), and the video row and file with the last of them."""

    list_display = ["original_name", "duration", "width", "height", "frame_count", "created_at"]
    search_fields = ["original_name", "=sha256"]
    readonly_fields = ["original_name", "file", "sha256", "duration", "width", "height", "created_at"]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return request.user.has_perm("catalog.delete_image")

    @admin.display(description=_("Key frames"))
    def frame_count(self, video: Video) -> int:
        return video.frames.count()

    def delete_model(self, request, obj):
        from catalog.derived_files import delete_images

        delete_images(Image.objects.filter(video=obj))

    def delete_queryset(self, request, queryset):
        from catalog.derived_files import delete_images

        delete_images(Image.objects.filter(video__in=queryset))


def _semantic_text(request) -> str | None:
    term = request.GET.get("q", "")
    return term[len(SEMANTIC_PREFIX):].strip() if term.startswith(SEMANTIC_PREFIX) else None


@admin.register(EmbeddingSpace)
class EmbeddingSpaceAdmin(admin.ModelAdmin):
    """The model lifecycle (catalog/spaces.py): each space's coverage is its build's progress; the
    actions switch searches to a space, resume its build, or drop it (``manage.py models`` alike)."""

    list_display = ["name", "model", "dimensions", "vectors", "coverage", "index_size", "state", "error",
                    "activated_at", "created_at"]
    list_filter = ["state"]
    readonly_fields = ["name", "model", "dimensions", "vectors", "coverage", "index_size", "state", "error",
                       "architecture", "pretrained", "weights_file", "random_init", "activated_at", "created_at"]
    fields = readonly_fields
    actions = ["activate", "resume_build", "drop"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # the "drop" action removes a space with its vectors and index

    def _status(self, space: EmbeddingSpace):
        from catalog import spaces

        cache = getattr(self, "_statuses", None)
        if cache is None or cache[0] is not space:
            self._statuses = cache = (space, spaces.space_status(space))
        return cache[1]

    @admin.display(description=_("Model"))
    def model(self, space: EmbeddingSpace) -> str:
        from catalog.spaces import model_label

        return model_label(space)

    @admin.display(description=_("Vectors"))
    def vectors(self, space: EmbeddingSpace) -> int:
        return self._status(space).vectors

    @admin.display(description=_("Coverage"))
    def coverage(self, space: EmbeddingSpace) -> str:
        status = self._status(space)
        return f"{status.coverage:.1f}% ({status.missing} missing)" if status.missing else f"{status.coverage:.1f}%"

    @admin.display(description=_("Index size"))
    def index_size(self, space: EmbeddingSpace) -> str:
        size = self._status(space).index_bytes
        return "-" if size is None else filesizeformat(size)

    @admin.action(description=_("Serve searches from the selected space (needs 100%% coverage)"),
                  permissions=["change"])
    def activate(self, request, queryset):
        from catalog import spaces

        if queryset.count() != 1:
            self.message_user(request, gettext("Select exactly one space to activate."), messages.ERROR)
            return
        try:
            activation = spaces.activate(name=queryset.get().name)
        except spaces.SpaceError as error:
            self.message_user(request, str(error), messages.ERROR)
            return
        from catalog.jobs import builds, tasks

        builds.after_switch(activation.space.pk, enqueue=tasks.enqueue_build)
        self.message_user(request, gettext("Searches now use %(name)s.") % {"name": activation.space.name},
                          messages.SUCCESS)

    @admin.action(description=_("Build the selected spaces (resume; embeds missing images)"), permissions=["change"])
    def resume_build(self, request, queryset):
        from catalog.jobs import builds, tasks

        for space in queryset:
            try:
                builds.start_build(architecture=space.architecture, pretrained=space.pretrained,
                                   weights_file=space.weights_file or None, enqueue=tasks.enqueue_build)
            except (EmbedderUnavailable, ValueError) as error:
                self.message_user(request, f"{space.name}: {error}", messages.ERROR)
            else:
                self.message_user(request, gettext("%(name)s is building.") % {"name": space.name}, messages.SUCCESS)

    @admin.action(description=_("Drop the selected spaces (vectors and index; never the active one)"),
                  permissions=["delete"])
    def drop(self, request, queryset):
        from catalog import spaces

        for name in queryset.values_list("name", flat=True):
            try:
                removed = spaces.drop(name=name)
            except spaces.SpaceError as error:
                self.message_user(request, str(error), messages.ERROR)
            else:
                self.message_user(request, gettext("Dropped %(name)s (%(count)d vectors).")
                                  % {"name": name, "count": removed}, messages.SUCCESS)


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

    @admin.display(description=_("Progress"))
    def progress(self, job: ImportJob) -> str:
        return f"{job.done} / {job.total}"

    @admin.display(description=_("Import page"))
    def page_link(self, job: ImportJob):
        url = reverse("catalog:import-detail", args=[job.pk])
        return format_html('<a href="{}">{}</a>', url, url)

    @admin.display(description=_("Per-item errors"))
    def item_errors(self, job: ImportJob):
        errors = import_jobs.job_errors(job, limit=ADMIN_ERRORS_SHOWN)
        if not errors:
            return "—"
        return format_html("<ul>{}</ul>", format_html_join(
            "", "<li>{} ({}): {}</li>", ((e["item"], e["source"], e["message"]) for e in errors)))

    @admin.action(description=_("Retry selected failed imports"), permissions=["retry"])
    def retry(self, request, queryset):
        retried = sum(import_jobs.retry_job(job_id) for job_id in queryset.values_list("pk", flat=True))
        self.message_user(request, ngettext("%(count)d import queued again.", "%(count)d imports queued again.",
                                            retried) % {"count": retried})

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
            self.message_user(request, gettext("Import queued; the background worker is processing it."),
                              messages.SUCCESS)
            return redirect("admin:catalog_importjob_change", job.pk)
        context = {**self.admin_site.each_context(request), "title": gettext("Start an import"), "form": form,
                   "opts": self.model._meta, **(extra_context or {})}
        return TemplateResponse(request, "catalog/imports/admin_add.html", context)


# --- API tokens -----------------------------------------------------------------------------------

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

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user" and not request.user.is_superuser:
            # Staff who may add tokens make them for themselves only: another user's id is not a choice.
            kwargs["queryset"] = get_user_model().objects.filter(pk=request.user.pk)
            kwargs["initial"] = request.user.pk
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        if not change and not tokens.may_create_token(by=request.user, user=obj.user):
            raise PermissionDenied  # the form refuses it already; this holds whatever the form allowed
        super(AuthTokenAdmin, self).save_model(request, obj, form, change)
        if not change:
            self.message_user(request, gettext("New API token for %(user)s (copy it now, it is not shown again): "
                                               "%(token)s") % {"user": obj.user, "token": form.token},
                              messages.WARNING)


# --- Users: a password set by an administrator revokes the user's API tokens ------------------------


class TokenRevokingPasswordForm(AdminPasswordChangeForm):
    """The user admin's "change password" form (UserAdmin.user_change_password saves it on success)."""

    def save(self, commit=True):
        user = super().save(commit=commit)
        tokens.revoke_user_tokens(user=user)
        return user


class ProjectUserAdmin(UserAdmin):
    change_password_form = TokenRevokingPasswordForm


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), ProjectUserAdmin)


# --- Evaluations (manage.py evaluate) -------------------------------------------------------------




class EvaluationShownFilter(admin.SimpleListFilter):
    """By default each space's latest run only: what the model measures now."""

    title = _("runs")
    parameter_name = "runs"

    def lookups(self, request, model_admin):
        return [("all", _("All runs"))]

    def queryset(self, request, queryset):
        if self.value() == "all":
            return queryset
        latest = (EvaluationRun.objects.order_by("space_name", "-created_at", "-id")
                  .distinct("space_name").values("pk"))
        return queryset.filter(pk__in=latest)


@admin.register(EvaluationRun)
class EvaluationRunAdmin(admin.ModelAdmin):
    """Read-only: runs are written by ``manage.py evaluate`` only."""

    list_display = ["space_name", "created_at", "pictures", "zero_shot_top1", "text_to_image_recall_1",
                    "near_duplicate_recall_1", "near_duplicate_threshold"]
    list_filter = [EvaluationShownFilter, "space_name"]
    search_fields = ["space_name"]
    fields = ["space_name", "created_at", "results_table"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @staticmethod
    def _metric(run: EvaluationRun, name: str):
        value = (run.results.get("metrics") or {}).get(name)
        return "-" if value is None else f"{value:.3f}"

    @admin.display(description=_("pictures"))
    def pictures(self, run: EvaluationRun):
        return (run.results.get("dataset") or {}).get("pictures", "-")

    @admin.display(description=_("zero-shot top-1"))
    def zero_shot_top1(self, run: EvaluationRun):
        return self._metric(run, "zero_shot_top1")

    @admin.display(description=_("text-to-image recall@1"))
    def text_to_image_recall_1(self, run: EvaluationRun):
        return self._metric(run, "text_to_image_recall@1")

    @admin.display(description=_("near-duplicate recall@1"))
    def near_duplicate_recall_1(self, run: EvaluationRun):
        return self._metric(run, "near_duplicate_recall@1")

    @admin.display(description=_("min_score for 90% precision"))
    def near_duplicate_threshold(self, run: EvaluationRun):
        return self._metric(run, "near_duplicate_threshold_p90")

    @admin.display(description=_("results"))
    def results_table(self, run: EvaluationRun):
        from catalog.evaluation import format_table

        try:
            text = format_table([run.results])
        except (KeyError, TypeError, AttributeError):  # written by another version: show it raw
            text = json.dumps(run.results, indent=2, ensure_ascii=False)
        return format_html("<pre>{}</pre>", text)
