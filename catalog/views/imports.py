"""Import pages. (Being written for the ingestion-at-scale issue.)"""

from django.http import HttpResponse


def import_page(request):
    return HttpResponse("Imports are not available yet.")


def import_detail(request, pk):
    return HttpResponse("Imports are not available yet.")
