"""Value graphs follow the collection: a finished import queues one refresh, which rebuilds the
graphs of spaces that changed by a tenth (the refresh itself: tests/test_filtered_search.py)."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from catalog.jobs import requests as jobs
from catalog.jobs import tasks
from catalog.models import ImportJob
from tests import hostile


@pytest.mark.django_db
def test_finished_import_jobs_queue_one_value_graph_refresh():
    from django_tasks_db.models import DBTaskResult

    queued = DBTaskResult.objects.filter(status="READY", task_path=tasks.run_graph_refresh.module_path)
    assert not queued.exists()
    for n in range(2):
        job = jobs.create_job(files=[SimpleUploadedFile(f"{n}.jpg", hostile.photo(n))], via=ImportJob.Via.API)
        assert tasks.run_job(job.pk) == "done"
        assert queued.count() == 1  # the second job finds it waiting
    assert tasks.run_job(job.pk) == "finished"  # a finished job looked at again queues nothing more
    assert queued.count() == 1


@pytest.mark.django_db
def test_a_graph_refresh_with_no_space_asking_for_graphs_does_nothing():
    assert tasks.run_graph_refresh.call() == "current"
