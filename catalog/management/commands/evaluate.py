import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Measure one or several models on your own pictures, in memory (nothing is imported): zero-shot "
            "classification on a labelled folder (one sub-folder per class), text-to-image recall on a CSV of "
            "image path + caption, near-duplicate recall on generated variants, and the score threshold that "
            "keeps 90% precision for near-duplicates. Prints a table; the admin shows each model's last results.")

    def add_arguments(self, parser):
        parser.add_argument("--folder", type=Path, help="Labelled folder: one sub-folder of pictures per class.")
        parser.add_argument("--captions", type=Path, help="CSV of image path, caption (paths relative to the CSV).")
        parser.add_argument("--model", action="append", dest="models", metavar="ARCH/PRETRAINED",
                            help="A model to evaluate: a space's name (manage.py models) or ARCH/PRETRAINED written "
                                 "the same way (e.g. ViT-B-32/laion2b_s34b_b79k, ViT-B-32/file:/models/w.bin); "
                                 "repeatable. Default: the active space's model.")
        parser.add_argument("--all-spaces", action="store_true", help="Evaluate the model of every space.")
        parser.add_argument("--seed", type=int, default=0, help="Seed of the near-duplicate variants (default 0).")
        parser.add_argument("--json", type=Path, dest="json_file", help="Also write the results to this JSON file.")
        parser.add_argument("--no-save", action="store_true", help="Do not keep the results for the admin.")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, folder, captions, models, all_spaces, seed, json_file, no_save, no_progress, **options):
        from catalog.embedder import EmbedderUnavailable
        from catalog.evaluation import EvaluationError, embedder_for, evaluate, format_table, load_eval_set, save_run
        from catalog.management.progress import progress_bar

        try:
            data = load_eval_set(folder=folder, captions_csv=captions)
        except EvaluationError as error:
            raise CommandError(str(error)) from None
        if all_spaces:
            from catalog.models import EmbeddingSpace

            models = [*(models or []), *EmbeddingSpace.objects.exclude(architecture="").order_by("pk")
                      .values_list("name", flat=True)]
        runs, failed_models = [], []
        for name in models or [None]:
            try:
                embedder = embedder_for(name)
            except EmbedderUnavailable as error:
                self.stderr.write(str(error))
                failed_models.append(name)
                continue
            self.stdout.write(f"Evaluating {embedder.space_name} on {len(data.paths)} picture(s)...")
            with progress_bar(total=2 * len(data.paths), enabled=not no_progress, stream=self.stderr) as bar:
                runs.append(evaluate(embedder=embedder, data=data, seed=seed, on_progress=bar.update))
            del embedder  # one model in memory at a time (the configured one stays cached)
        for line in data.problems:
            self.stderr.write(line)
        if runs:
            self.stdout.write(format_table(runs))
            if json_file is not None:
                try:
                    json_file.write_text(json.dumps({"runs": runs}, indent=2, ensure_ascii=False) + "\n")
                except OSError as error:
                    raise CommandError(f"cannot write {json_file}: {error.strerror or error}") from None
                self.stdout.write(f"Wrote {json_file}.")
            if not no_save:
                for run in runs:
                    save_run(results=run)
        problems = [f"{len(failed_models)} model(s) could not be loaded"] if failed_models else []
        problems += [f"{len(data.problems)} item(s) skipped"] if data.problems else []
        if problems:
            raise CommandError(", ".join(problems) + ".", returncode=1)
