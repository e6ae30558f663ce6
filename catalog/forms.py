from django import forms
from django.core.cache import cache

from catalog.models import Image
from catalog.search import MAX_ID, MAX_SIDE, ORIENTATIONS, SearchError
from catalog.search_input import build_search_params, decode_query_image

PAGE_TOP_K_CHOICES = [(n, str(n)) for n in range(1, 31)]
CITY_CHOICES_CACHE_SECONDS = 60


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
            raise forms.ValidationError("Null characters are not allowed.", code="null_characters_not_allowed")


class SearchForm(forms.Form):
    q = forms.CharField(label="Describe the picture", required=False, max_length=500,
                        widget=forms.TextInput(attrs={"placeholder": "snow-covered peaks in the sun / 草地上的小狗",
                                                      "autofocus": True}))
    image = forms.FileField(label="…or search by an example picture", required=False,
                            widget=forms.ClearableFileInput(attrs={"accept": "image/*"}))
    similar_to = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID, widget=forms.HiddenInput)
    cities = CitiesField(label="City", required=False,
                                       widget=forms.SelectMultiple(attrs={"size": 4}))
    min_width = forms.IntegerField(label="Width from", required=False, min_value=1, max_value=MAX_SIDE)
    max_width = forms.IntegerField(label="to", required=False, min_value=1, max_value=MAX_SIDE)
    min_height = forms.IntegerField(label="Height from", required=False, min_value=1, max_value=MAX_SIDE)
    max_height = forms.IntegerField(label="to", required=False, min_value=1, max_value=MAX_SIDE)
    taken_from = forms.DateField(label="Taken from", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    taken_to = forms.DateField(label="to", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    orientation = forms.ChoiceField(required=False, choices=[("", "Any")] + [(o, o.title()) for o in ORIENTATIONS])
    top_k = forms.TypedChoiceField(label="Results", choices=PAGE_TOP_K_CHOICES, coerce=int, initial=12,
                                   required=False, empty_value=12)
    min_score = forms.FloatField(label="Minimum score", required=False, min_value=-1, max_value=1,
                                 widget=forms.NumberInput(attrs={"step": "0.01"}))
    collapse = forms.BooleanField(label="One result per group", required=False)
    page = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["cities"].choices = city_choices()

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        upload = cleaned.get("image")
        try:
            image = decode_query_image(upload.read()) if upload else None
            cleaned["params"] = build_search_params(cleaned, image=image)
        except SearchError as error:
            raise forms.ValidationError(str(error)) from None
        return cleaned
