"""`lookalike backfill` and `lookalike reconcile`: the gallery's lifecycle from a terminal.

Both take the same settings as the Lambda functions (see lookalike.settings): with none, the
embedded stores in the data directory; with the cloud's variables, S3, OpenSearch and Milvus.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from lookalike.errors import ConfigurationError
from lookalike.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from rich.console import Console

    from lookalike.lifecycle.backfill import BackfillState, Progress, Sink
    from lookalike.lifecycle.reconcile import ReconcileReport
    from lookalike.ports import ObjectStore


def _console() -> Console:
    from rich.console import Console

    return Console(stderr=False)


# --- backfill ------------------------------------------------------------------------------------


def backfill_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lookalike backfill",
        description="Index the images already in a bucket, through the same path as uploads "
        "(the indexing queue with --queue-url, else in this process). Resumable: run the same "
        "command again after an interruption.",
    )
    parser.add_argument("--bucket", required=True, help='the bucket ("local": the data dir\'s object store)')
    parser.add_argument("--prefix", help="only keys under this prefix (default: the owners' prefix)")
    parser.add_argument("--inventory", metavar="MANIFEST", help="read an S3 Inventory report (CSV) instead of listing")
    parser.add_argument("--rate", type=float, metavar="N", help="at most N objects a second (default: no limit)")
    parser.add_argument(
        "--max-queue-depth", type=int, metavar="N", help="wait while the queue holds more than N messages"
    )
    parser.add_argument("--queue-url", help="send S3 notifications to this SQS queue (the indexer's)")
    parser.add_argument("--state", type=Path, metavar="FILE", help="progress file (default: in the data dir)")
    parser.add_argument(
        "--model",
        choices=["live", "next"],
        default="live",
        help="next: fill the next model's collection during a model change (docs/operations.md)",
    )
    return parser


def backfill_main(argv: Sequence[str], *, settings: Settings) -> int:
    """Entry point of ``lookalike backfill``."""
    from lookalike.lifecycle.backfill import BackfillState, TokenBucket, load_state, run_backfill

    args = backfill_parser().parse_args(_options(argv))
    if args.max_queue_depth is not None and not args.queue_url:
        raise ConfigurationError("--max-queue-depth watches the queue of --queue-url: give both")
    settings = replace(settings, bucket=args.bucket)
    prefix = settings.owner_prefix if args.prefix is None else args.prefix
    source = args.inventory or "list"
    fresh = BackfillState(bucket=args.bucket, prefix=prefix, source=source, model=args.model)
    state_path = args.state or settings.data_dir / "backfill" / f"{args.bucket}-{args.model}.json"
    state = load_state(state_path, fresh)
    if state.finished:
        state = fresh  # a finished backfill is not resumed: this is a new one
    console = _console()
    if state.position:
        console.print(f"resuming after {state.position} objects (last key {state.after!r})", highlight=False)

    closers, sink, objects = _backfill_sink(args, settings, console)
    try:
        if args.inventory:
            from lookalike.lifecycle.listing import inventory_objects

            listing = inventory_objects(args.inventory, s3=_s3_client(objects), prefix=prefix, skip=state.position)
        else:
            from lookalike.lifecycle.backfill import objects_after

            listing = objects_after(objects, prefix, state)
        limiter = TokenBucket(args.rate) if args.rate else None
        final = _with_progress(
            console,
            lambda report: run_backfill(
                listing, sink, state, state_path=state_path, limiter=limiter, on_progress=report
            ),
        )
    except KeyboardInterrupt:
        console.print(f"interrupted: run the same command to resume (progress in {state_path})")
        return 130
    finally:
        for close in closers:
            close()
    _print_backfill(console, final)
    return 0


def _backfill_sink(
    args: argparse.Namespace, settings: Settings, console: Console
) -> tuple[list[Callable[[], None]], Sink, ObjectStore]:
    """The sink for the arguments, what to close afterwards, and the object store to list."""
    from lookalike import bootstrap

    if args.queue_url and args.model == "live":
        import boto3

        from lookalike.embedding import FeatureModel
        from lookalike.lifecycle.backfill import QueueSink

        hashes = bootstrap.build_hash_index(settings)
        objects = bootstrap.build_object_store(settings)
        sink = QueueSink(
            boto3.client("sqs"),
            args.queue_url,
            hashes=hashes,
            bucket=settings.bucket,
            owner_prefix=settings.owner_prefix,
            model=FeatureModel(settings.model_path, threads=1).name,
            region=settings.aws_region or "",
            max_queue_depth=args.max_queue_depth,
            on_wait=lambda depth: console.log(f"the queue holds {depth} messages: waiting"),
        )
        return [hashes.close], sink, objects
    from lookalike.lifecycle.backfill import sink_for

    services = bootstrap.build_services(settings)
    return [services.close], sink_for(services, args.model), services.objects


def _s3_client(objects: ObjectStore) -> S3Client | None:
    from lookalike.adapters.s3_objects import S3ObjectStore

    return objects.client if isinstance(objects, S3ObjectStore) else None


def _with_progress(console: Console, run: Callable[[Callable[[Progress], None]], BackfillState]) -> BackfillState:
    from rich.progress import Progress as Bar
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Bar(*columns, console=console, transient=True) as bar:
        task = bar.add_task("listing")

        def report(progress: Progress) -> None:
            bar.update(
                task,
                description=f"{progress.listed} listed, {progress.sent} sent, {progress.skipped} already indexed"
                f" - {progress.last_key[:60]}",
            )

        return run(report)


def _print_backfill(console: Console, state: BackfillState) -> None:
    counts = ", ".join(f"{name} {count}" for name, count in sorted(state.counts.items()))
    console.print(
        f"backfill of {state.bucket}/{state.prefix} ({state.model} model): {state.position} objects; {counts}"
    )


# --- reconcile -----------------------------------------------------------------------------------


def reconcile_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lookalike reconcile",
        description="Compare the bucket with both indexes and repair what differs.",
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would change, change nothing")
    parser.add_argument("--prefix", help="only keys under this prefix (default: the owners' prefix)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="stop repairing after this long and resume there next time (as the scheduled function does)",
    )
    return parser


def reconcile_main(argv: Sequence[str], *, settings: Settings) -> int:
    """Entry point of ``lookalike reconcile``; exits 1 when some repair failed (retried next run)."""
    import time

    from lookalike.bootstrap import build_services
    from lookalike.lifecycle.reconcile import reconcile

    args = reconcile_parser().parse_args(_options(argv))
    services = build_services(settings)
    try:
        deadline = None if args.time_budget is None else time.monotonic() + args.time_budget
        report = reconcile(services, prefix=args.prefix, dry_run=args.dry_run, deadline=deadline)
    finally:
        services.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_reconcile(_console(), report)
    return 1 if report.results.get("failed") else 0


def print_reconcile(console: Console, report: ReconcileReport) -> None:
    from rich.table import Table

    scanned = ", ".join(f"{count} {name}" for name, count in report.scanned.items())
    console.print(f"scanned {scanned} under {report.prefix!r}" + (" (dry run)" if report.dry_run else ""))
    if report.nothing_to_do:
        console.print("[green]nothing to do[/]: the indexes match the bucket")
    else:
        table = Table(title="dry run: would change" if report.dry_run else "changed", title_justify="left")
        table.add_column("key")
        table.add_column("action")
        table.add_column("why")
        for finding in report.findings[:50]:
            table.add_row(finding.key, finding.action, finding.reason)
        console.print(table)
        if len(report.findings) > 50 or sum(report.planned.values()) > len(report.findings):
            console.print(f"... {sum(report.planned.values()) - 50} more (--json lists up to 1,000)")
    summary = Table(title="counts", title_justify="left")
    summary.add_column("")
    summary.add_column("count", justify="right")
    for title, counts in (("planned", report.planned), ("result", report.results), ("left alone", report.unchanged)):
        for name, count in sorted(counts.items()):
            summary.add_row(f"{title}: {name}", str(count))
    console.print(summary)
    if not report.complete:
        console.print("[yellow]stopped at the time budget[/]: the next run resumes where this one stopped")


def _options(argv: Sequence[str]) -> list[str]:
    argv = list(argv)
    return argv[1:] if argv[:1] == ["--"] else argv
