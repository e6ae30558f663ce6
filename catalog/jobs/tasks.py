"""Task-queue entry points for import jobs (django-tasks; run by ``manage.py db_worker``).
Tasks receive ids only. The worker schedules the job's next runs through ``SCHEDULER``."""

from __future__ import annotations

import uuid
from datetime import datetime

from django_tasks import task
from django_tasks.backends.immediate import ImmediateBackend

from catalog import spaces
from catalog.jobs import builds, worker


@task()
def run_import(job_id: str) -> str:
    """Work on import job ``job_id``. Safe to run any number of times, by any number of workers
    at once: a finished job is left alone, and items others hold are looked at again later."""
    return run_job(uuid.UUID(job_id))


def run_job(job_id: uuid.UUID) -> str:
    """What ``run_import`` does, called directly (tests, benches)."""
    return worker.run_job(job_id, scheduler=SCHEDULER)


def enqueue_import(job_id: uuid.UUID, *, run_after: datetime | None = None) -> None:
    """Queue ``run_import`` for the job. Call from ``transaction.on_commit`` so the worker
    never sees a task before the rows it needs."""
    if run_after is not None:
        if not run_import.get_backend().supports_defer:
            return  # e.g. the immediate backend: nothing runs later, nothing to schedule
        run_import.using(run_after=run_after).enqueue(str(job_id))
    else:
        run_import.enqueue(str(job_id))


def invite_import(job_id: uuid.UUID) -> None:
    """Queue ``run_import`` for another worker to join the job; not where tasks run inline (the
    immediate backend), where it would only nest a second run inside this one."""
    if not isinstance(run_import.get_backend(), ImmediateBackend):
        enqueue_import(job_id)


def has_queued_import(job_id: uuid.UUID, *, due_now: bool = False) -> bool:
    """Whether a ``run_import`` for the job waits in the database queue (DB backend only);
    ``due_now``: one that a worker may pick up right away (not a watch set for later)."""
    return _waiting(run_import, str(job_id), due_now=due_now)


def _waiting(queued_task, first_argument=None, *, due_now: bool = False) -> bool:
    """Whether ``queued_task`` (with this first argument, if given) waits in the database queue;
    always False with another backend."""
    from django_tasks_db.backend import DatabaseBackend  # only with that backend configured
    from django_tasks_db.models import DBTaskResult

    if not isinstance(queued_task.get_backend(), DatabaseBackend):
        return False
    waiting = DBTaskResult.objects.ready() if due_now else DBTaskResult.objects.filter(status="READY")
    waiting = waiting.filter(task_path=queued_task.module_path)
    if first_argument is not None:
        waiting = waiting.filter(args_kwargs__args__0=first_argument)
    return waiting.exists()


# --- value graphs as the collection changes (catalog.spaces.refresh_due_graphs) ---------------------


@task()
def run_graph_refresh() -> str:
    """Refresh the value graphs of spaces whose size changed by a tenth since their last refresh;
    safe to run any number of times (one refresh per space at a time, the others skip it)."""
    refreshed = spaces.refresh_due_graphs()
    return "; ".join(f"{name}: {len(changes)} graph(s) looked at" for name, changes in refreshed.items()) or "current"


def enqueue_graph_refresh(job_id: uuid.UUID | None = None) -> None:
    """Queue ``run_graph_refresh`` (after an import job finished) unless one waits already."""
    if not _waiting(run_graph_refresh):
        run_graph_refresh.enqueue()


SCHEDULER = worker.Scheduler(enqueue=enqueue_import, has_waiting=has_queued_import, invite=invite_import,
                             finished=enqueue_graph_refresh)


# --- building embedding spaces (catalog.jobs.builds) ----------------------------------------------


@task()
def run_space_build(space_id: int) -> str:
    """Embed images missing from embedding space ``space_id``; safe to run any number of times, by
    any number of workers at once."""
    return builds.run_build(space_id, scheduler=BUILD_SCHEDULER)


def enqueue_build(space_id: int, *, run_after: datetime | None = None) -> None:
    if run_after is not None:
        if not run_space_build.get_backend().supports_defer:
            return
        run_space_build.using(run_after=run_after).enqueue(space_id)
    else:
        run_space_build.enqueue(space_id)


def invite_build(space_id: int) -> None:
    if not isinstance(run_space_build.get_backend(), ImmediateBackend):
        enqueue_build(space_id)


def has_queued_build(space_id: int, *, due_now: bool = False) -> bool:
    return _waiting(run_space_build, space_id, due_now=due_now)


BUILD_SCHEDULER = builds.BuildScheduler(enqueue=enqueue_build, has_waiting=has_queued_build, invite=invite_build)
