from django import forms
from django.core.cache import cache
from django.utils.translation import gettext_lazy as _

from catalog.models import Image
from catalog.search import MAX_BROWSE_PAGE, MAX_ID, MAX_SIDE, ORIENTATIONS, SearchBusy, SearchError
from catalog.search_input import REGION_FIELDS, build_filters, build_search_params, build_region, decode_query_image

PAGE_TOP_K_CHOICES = [(n, str(n)) for n in range(1, 31)]
CITY_CHOICES_CACHE_SECONDS = 60
FILTER_FIELDS = ("cities", "min_width", "max_width", "min_height", "max_height", "taken_from", "taken_to",
                 "orientation", "attr", "tag", "sort", "top_k", "min_score", "collapse")
RANGES = (("min_width", "max_width"), ("min_height", "max_height"), ("taken_from", "taken_to"))


def city_choices() -> list[tuple[str, str]]:
    # Cached: a DISTINCT over millions of rows is too slow to run on every page view.
    cities = cache.get("catalog:cities")
    if cities is None:
        cities = list(Image.objects.exclude(city="").order_by("city").values_list("city", flat=True).distinct())
        cache.set("catalog:cities", cities, CITY_CHOICES_CACHE_SECONDS)
    return [(city, city) for city in cities]


class CitiesField(forms.MultipleChoiceField):
    """Offers the known cities, but accepts any: the list is cached, and an unknown city just matches nothing."""

    def valid_value(self, value) -> bool:
        return True

    def validate(self, value):
        super().validate(value)
        if any("\x00" in city for city in value):  # PostgreSQL text cannot hold NUL: refuse it here
            raise forms.ValidationError(_("Null characters are not allowed."), code="null_characters_not_allowed")


class _ListInput(forms.TextInput):
    """One text box for a repeatable parameter: reads every value (``?attr=a:b&attr=c:d``) and shows
    them joined by "; "."""

    def value_from_datadict(self, data, files, name):
        return data.getlist(name) if hasattr(data, "getlist") else data.get(name)

    def format_value(self, value):
        return "; ".join(value) if isinstance(value, (list, tuple)) else super().format_value(value)


class SemicolonListField(forms.Field):
    """Values separated by ";" (or the parameter repeated), e.g. attribute filters or tags."""

    widget = _ListInput

    def __init__(self, *, max_length: int, **kwargs):
        self.item_max_length = max_length
        super().__init__(**kwargs)

    def to_python(self, value) -> list[str]:
        values = value if isinstance(value, (list, tuple)) else [value or ""]
        items = [item.strip() for text in values for item in str(text).split(";") if item.strip()]
        if any(len(item) > self.item_max_length or "\x00" in item for item in items):
            raise forms.ValidationError(_("Each value may have at most %(max)d characters.")
                                        % {"max": self.item_max_length})
        return items


def iso_date_input() -> forms.DateInput:
    # type=date inputs take ISO dates only, whatever the page's language (zh-hans' first format is 2024/01/05).
    return forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")


class SearchForm(forms.Form):
    """One form for the three kinds of query (words, a picture, "more like this") and for browsing.

    The button pressed decides the kind: "search=image" searches the uploaded picture; words typed
    (Enter presses the first button, "search=text") replace a "more like this" context; no query at
    all browses the collection with the filters. ``cleaned_data["kind"]`` says which it was."""

    q = forms.CharField(label=_("Describe the picture"), required=False, max_length=500,
                        widget=forms.TextInput(attrs={"placeholder": _("snow-covered peaks in the sun / 草地上的小狗"),
                                                      "type": "search"}))
    image = forms.FileField(label=_("…or search by an example picture"), required=False,
                            widget=forms.ClearableFileInput(attrs={"accept": "image/*"}))
    similar_to = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID, widget=forms.HiddenInput)
    cities = CitiesField(label=_("City"), required=False, widget=forms.SelectMultiple(attrs={"size": 4}))
    min_width = forms.IntegerField(label=_("Width from"), required=False, min_value=1, max_value=MAX_SIDE)
    max_width = forms.IntegerField(label=_("Width to"), required=False, min_value=1, max_value=MAX_SIDE)
    min_height = forms.IntegerField(label=_("Height from"), required=False, min_value=1, max_value=MAX_SIDE)
    max_height = forms.IntegerField(label=_("Height to"), required=False, min_value=1, max_value=MAX_SIDE)
    taken_from = forms.DateField(label=_("Taken from"), required=False, widget=iso_date_input())
    taken_to = forms.DateField(label=_("Taken to"), required=False, widget=iso_date_input())
    orientation = forms.ChoiceField(
        label=_("Orientation"), required=False,
        choices=[("", _("Any"))] + list(zip(ORIENTATIONS, (_("Landscape"), _("Portrait"), _("Square")))),
        error_messages={"invalid_choice": _("Choose landscape, portrait or square.")})
    attr = SemicolonListField(label=_("Attributes"), required=False, max_length=300,
                              help_text=_("name:value, several separated by ;"),
                              widget=_ListInput(attrs={"placeholder": "brand:acme"}))
    tag = SemicolonListField(label=_("Tags"), required=False, max_length=100,
                             help_text=_("Several separated by ;"))
    sort = forms.ChoiceField(label=_("Order without a query"), required=False,
                             choices=[("added", _("Newest first")), ("taken", _("Date taken"))],
                             error_messages={"invalid_choice": _("Choose newest first or date taken.")})
    top_k = forms.TypedChoiceField(label=_("Per page"), choices=PAGE_TOP_K_CHOICES, coerce=int, initial=12,
                                   required=False, empty_value=12,
                                   error_messages={"invalid_choice": _("Choose from 1 to 30 per page.")})
    min_score = forms.FloatField(label=_("Minimum score"), required=False, min_value=-1, max_value=1,
                                 widget=forms.NumberInput(attrs={"step": "0.01"}))
    collapse = forms.BooleanField(label=_("One result per group"), required=False)
    page = forms.IntegerField(required=False, min_value=1, max_value=MAX_BROWSE_PAGE, widget=forms.HiddenInput)
    # The region picker's box (catalog/_region_picker.html), relative to the picture: set by its script.
    region_x = forms.FloatField(required=False, widget=forms.HiddenInput)
    region_y = forms.FloatField(required=False, widget=forms.HiddenInput)
    region_w = forms.FloatField(required=False, widget=forms.HiddenInput)
    region_h = forms.FloatField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["cities"].choices = city_choices()

    def full_clean(self):
        super().full_clean()
        for name in self.errors:  # screen readers read the message with the field (templates/catalog/_field.html)
            if name in self.fields:
                self.fields[name].widget.attrs["aria-describedby"] = f"{self[name].auto_id}_error"

    def filter_fields(self):
        return [self[name] for name in FILTER_FIELDS]

    def filters_have_errors(self) -> bool:
        return self.is_bound and any(self[name].errors for name in FILTER_FIELDS)

    def active_filter_count(self) -> int:
        """Filters in use (not the page size or order): shown on the closed filters toggle."""
        data = getattr(self, "cleaned_data", {})
        return sum(1 for name in FILTER_FIELDS
                   if name not in ("top_k", "sort") and data.get(name) not in (None, "", [], (), False))

    def clean(self):
        cleaned = super().clean()
        for low, high in RANGES:  # next to the field, before the search refuses the empty range
            if cleaned.get(low) is not None and cleaned.get(high) is not None and cleaned[low] > cleaned[high]:
                self.add_error(high, _("This is below the lower bound."))
        if self.errors:
            return cleaned
        upload = cleaned.get("image")
        if self.data.get("search") == "image":  # a picture button: the picture (or the stored one) is the query
            if not upload and cleaned.get("similar_to") is None:
                self.add_error("image", _("Choose a picture to search with."))
                return cleaned
            cleaned["q"] = ""
            if upload:
                cleaned["similar_to"] = None
        elif cleaned.get("q"):  # words typed replace a "more like this" context kept in the form
            cleaned["similar_to"], upload = None, None
            cleaned.update(dict.fromkeys(REGION_FIELDS))  # a region belongs to a picture, not to words
        elif upload:
            cleaned["similar_to"] = None
        try:
            image = decode_query_image(upload.read(), region=build_region(cleaned)) if upload else None
        except SearchError as error:
            code = "busy" if isinstance(error, SearchBusy) else "invalid"  # busy: a 503 (catalog/views/search.py)
            self.add_error("image", forms.ValidationError(str(error), code=code))
            return cleaned
        try:
            if image is None and not cleaned.get("q") and cleaned.get("similar_to") is None:
                cleaned["kind"], cleaned["params"] = "browse", None  # filters alone are a valid search
                cleaned["filters"] = build_filters(cleaned)
            else:
                cleaned["kind"] = "image" if image is not None else "text" if cleaned.get("q") else "similar"
                cleaned["params"] = build_search_params(cleaned, image=image)
                cleaned["query_image"] = image
        except SearchError as error:
            raise forms.ValidationError(str(error)) from None
        return cleaned
