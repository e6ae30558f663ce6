"""The import experience around a job: cancelling a running job, thumbnails of what it added."""

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from catalog.jobs import claims, tasks
from catalog.jobs import requests as jobs
from catalog.models import ImportItem, ImportJob
from tests.conftest import make_user, varied_picture

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def long_leases(settings):
    settings.IMPORT_LEASE_SECONDS = 600  # the heartbeat thread never needs the (uncommitted) test rows


def new_job(user, count: int) -> ImportJob:
    files = [SimpleUploadedFile(f"up{i}.png", varied_picture(i), content_type="image/png") for i in range(count)]
    return jobs.create_job(files=files, via=ImportJob.Via.PAGE, created_by=user)


def test_cancelling_a_running_job_stops_its_workers_and_keeps_what_was_added(client, writer,
                                                                          django_capture_on_commit_callbacks):
    job = new_job(writer, 3)
    first = claims.claim_chunk(job.pk, "worker-a", size=1)  # a worker is busy with one item
    assert first.outcome == claims.Claim.CLAIMED
    client.force_login(writer)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/imports/{job.pk}/cancel/")
    assert response.status_code == 302 and response["Location"] == f"/imports/{job.pk}/"
    job.refresh_from_db()
    assert job.state == ImportJob.State.CANCELLED and job.finished_at is not None
    # No worker claims anything of it any more; a whole run of it ends at once.
    assert claims.claim_chunk(job.pk, "worker-b", size=10).outcome == claims.Claim.FINISHED
    assert tasks.run_job(job.pk) == "finished"
    assert job.items.pending().count() == 3
    assert not default_storage.exists(job.items.first().payload)  # its uploads are gone
    page = client.get(f"/imports/{job.pk}/").content.decode()
    assert "Cancelled" in page and "Cancel the import" not in page
    again = client.post(f"/imports/{job.pk}/cancel/", follow=True)
    assert "already finished" in again.content.decode()


def test_only_the_owner_or_an_editor_may_cancel_and_only_by_post(client, writer):
    job = new_job(writer, 1)
    viewer = make_user("viewer", "add_importjob", "view_importjob")
    client.force_login(viewer)
    assert "Cancel the import" not in client.get(f"/imports/{job.pk}/").content.decode()
    assert client.post(f"/imports/{job.pk}/cancel/").status_code == 403
    client.force_login(writer)
    assert client.get(f"/imports/{job.pk}/cancel/").status_code == 405
    assert "Cancel the import" in client.get(f"/imports/{job.pk}/").content.decode()
    job.refresh_from_db()
    assert job.state == ImportJob.State.QUEUED


def test_the_job_page_shows_thumbnails_of_the_added_images(client, writer):
    job = new_job(writer, 2)
    assert tasks.run_job(job.pk) == "done"
    client.force_login(writer)
    page = client.get(f"/imports/{job.pk}/").content.decode()
    added = [item.image for item in job.items.filter(state=ImportItem.State.ADDED)]
    assert len(added) == 2
    for image in added:
        assert f'href="/images/{image.pk}/"><img src="{image.thumbnail_url}"' in page


def test_the_api_cancels_a_job_for_its_owner_and_refuses_others(client, writer, api_token):
    job = new_job(writer, 1)
    other = make_user("other-viewer", "view_importjob")
    client.force_login(other)
    refused = client.post(f"/api/imports/{job.pk}/cancel/")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    client.logout()
    response = client.post(f"/api/imports/{job.pk}/cancel/", HTTP_AUTHORIZATION=f"Bearer {api_token}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    again = client.post(f"/api/imports/{job.pk}/cancel/", HTTP_AUTHORIZATION=f"Bearer {api_token}")
    assert again.status_code == 200 and again.json()["state"] == "cancelled"
