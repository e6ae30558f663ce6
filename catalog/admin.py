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
