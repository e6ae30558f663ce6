"""The import page: upload images or archives, or list URLs; then watch the job's progress."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _, gettext_lazy
from django.views.decorators.http import require_POST

from catalog.accounts.access import IMPORT_PERMISSION, may_cancel_import, visible_import_jobs
from catalog.accounts.throttling import throttle_posts
from catalog.jobs import requests as jobs
from catalog.models import ImportJob

RECENT_JOBS = 20
THUMBNAILS_SHOWN = 60
ERRORS_SHOWN = 200
REFRESH_SECONDS = 2


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def __init__(self, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput())
        # An empty file is not a form error: the job records it as a failed item.
        super().__init__(allow_empty_file=True, **kwargs)

    def clean(self, data, initial=None):
        files = data if isinstance(data, (list, tuple)) else [data]
        cleaned = [super(MultipleFileField, self).clean(file, initial) for file in files]
        try:
            return [jobs.validate_upload(file) for file in cleaned if file]
        except jobs.ImportRequestError as error:
            raise forms.ValidationError(str(error)) from None


class ImportForm(forms.Form):
    """Shared by the import page and the admin's "add import" page."""

    files = MultipleFileField(label=gettext_lazy("Images, videos or archives (zip, tar, tar.gz)"), required=False)
    urls = forms.CharField(label=gettext_lazy("…or image URLs, one per line"), required=False,
                           widget=forms.Textarea(attrs={"rows": 4, "placeholder": "https://example.com/photo.jpg"}))
    manifest = forms.FileField(
        label=gettext_lazy("…or a manifest (CSV or JSON Lines): one image URL per row, with its own metadata"),
        required=False, allow_empty_file=True,
        help_text=gettext_lazy("An archive may hold manifest.csv or manifest.jsonl at its root instead."))
    city = forms.CharField(label=gettext_lazy("City"), max_length=120, required=False,
                           help_text=gettext_lazy("For every image (else taken from GPS)."))
    group_key = forms.CharField(label=gettext_lazy("Group key"), max_length=120, required=False,
                                help_text=gettext_lazy("For every image, e.g. a product id."))

    def clean_urls(self) -> list[str]:
        lines = [line.strip() for line in self.cleaned_data["urls"].splitlines() if line.strip()]
        try:
            return jobs.validate_urls(lines)
        except jobs.ImportRequestError as error:
            raise forms.ValidationError(str(error)) from None

    def clean_manifest(self):
        manifest = self.cleaned_data.get("manifest")
        try:
            return jobs.validate_manifest(manifest) if manifest else None
        except jobs.ImportRequestError as error:
            raise forms.ValidationError(str(error)) from None

    def clean(self):
        cleaned = super().clean()
        if not self.errors and not cleaned.get("files") and not cleaned.get("urls") and not cleaned.get("manifest"):
            raise forms.ValidationError(_("Choose a file to upload or enter at least one URL."))
        return cleaned

    def create_job(self, via: str, created_by) -> ImportJob:
        data = self.cleaned_data
        return jobs.create_job(files=data["files"], urls=data["urls"], city=data["city"],
                               group_key=data["group_key"], via=via, created_by=created_by,
                               manifest=data.get("manifest"))


@login_required
@throttle_posts("upload")  # the API's upload budget; after the login check, so counted per user
def import_page(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm(IMPORT_PERMISSION):
        raise PermissionDenied(_("Your account may not start imports."))
    form = ImportForm(request.POST, request.FILES) if request.method == "POST" else ImportForm()
    if request.method == "POST" and form.is_valid():
        job = form.create_job(ImportJob.Via.PAGE, created_by=request.user)
        return redirect("catalog:import-detail", pk=job.pk)
    context = {"form": form, "recent": visible_import_jobs(user=request.user).order_by("-created_at")[:RECENT_JOBS]}
    return render(request, "catalog/imports/index.html", context, status=400 if form.is_bound else 200)


@login_required
def import_detail(request: HttpRequest, pk) -> HttpResponse:
    job = get_object_or_404(visible_import_jobs(user=request.user), pk=pk)
    context = {"job": job, "errors": jobs.job_errors(job, limit=ERRORS_SHOWN), "errors_shown": ERRORS_SHOWN,
               "refresh_seconds": REFRESH_SECONDS, "added_images": jobs.added_images(job, limit=THUMBNAILS_SHOWN),
               "thumbnails_shown": THUMBNAILS_SHOWN, "may_cancel": may_cancel_import(user=request.user, job=job)}
    return render(request, "catalog/imports/detail.html", context)


@login_required
@require_POST
def import_cancel(request: HttpRequest, pk) -> HttpResponse:
    job = get_object_or_404(visible_import_jobs(user=request.user), pk=pk)
    if not may_cancel_import(user=request.user, job=job):
        raise PermissionDenied(_("Only whoever started an import, or an editor of imports, may cancel it."))
    if jobs.cancel_job(job.pk):
        messages.success(request, _("The import was cancelled: what it had added stays."))
    else:
        messages.info(request, _("The import had already finished."))
    return redirect("catalog:import-detail", pk=job.pk)
