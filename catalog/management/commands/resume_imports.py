from django.core.management.base import BaseCommand

from catalog.jobs import builds, payloads, requests, tasks


class Command(BaseCommand):
    help = ("Queue every unfinished import job that has no task waiting (e.g. its web process died right "
            "after accepting it), and delete payloads of finished imports. Run it before starting "
            "`manage.py db_worker`; safe to run any time. Jobs whose worker was killed are also picked up "
            "without it, once their claims (IMAGESEARCH_IMPORT_LEASE_SECONDS) run out. Builds of embedding "
            "spaces (manage.py models build) that have no task waiting are queued again too.")

    def handle(self, *args, **options):
        queued = requests.resume_unfinished()
        pruned = payloads.prune_payloads()
        self.stdout.write(f"Queued {len(queued)} unfinished import(s); removed {pruned} payload folder(s).")
        if spaces_queued := builds.resume_builds(scheduler=tasks.BUILD_SCHEDULER):
            self.stdout.write(f"Queued the build of {len(spaces_queued)} embedding space(s) (manage.py models).")
