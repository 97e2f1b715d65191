"""The `lookalike` command: index, search, delete and inspect a gallery from a terminal.

Runs on the embedded stores in ``--data-dir`` by default; the same environment variables
as the Lambda functions (see lookalike.settings) point it at Milvus/Zilliz and OpenSearch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from lookalike.errors import ImageRejected, LookalikeError
from lookalike.keys import owner_key
from lookalike.settings import Settings
from lookalike.thresholds import Thresholds

if TYPE_CHECKING:
    from rich.console import Console

    from lookalike.bootstrap import Services
    from lookalike.services import Hit, SearchResult

T = TypeVar("T")
INDEX_BATCH = 16
LOCAL_OWNER = "local"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "delegated", False):
        args.rest = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except LookalikeError as exc:
        print(f"lookalike: {exc.code}: {exc.message}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where the embedded stores live (default: $LOOKALIKE_DATA_DIR or ~/.local/share/lookalike)",
    )
    parser.add_argument("--owner", default=LOCAL_OWNER, help="whose gallery (default: %(default)s)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    index = commands.add_parser("index", help="index image files and folders (recursively)")
    index.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    index.set_defaults(run=cmd_index)

    search = commands.add_parser("search", help="find the original and lookalikes of an image")
    search.add_argument("image", help="an image file, or with --key the key of an indexed image")
    search.add_argument("--key", action="store_true", help="IMAGE is the key of an image already stored")
    search.add_argument("--json", action="store_true", help="print the answer as JSON")
    search.add_argument("--page", type=int, default=1)
    search.add_argument("--page-size", type=int, default=10)
    search.add_argument("--duplicate-distance", type=int, help="max pHash distance for a duplicate")
    search.add_argument("--duplicate-similarity", type=float, help="min cosine for a duplicate")
    search.add_argument("--min-similarity", type=float, help="min cosine for a similar image")
    search.set_defaults(run=cmd_search)

    delete = commands.add_parser("delete", help="remove an image from the indexes (and the local store)")
    delete.add_argument("key")
    delete.set_defaults(run=cmd_delete)

    stats = commands.add_parser("stats", help="what is indexed, where")
    stats.set_defaults(run=cmd_stats)

    delegated = {
        "serve": ("devserver:main", "the local twin of the cloud API and search page"),
        "eval": ("evaluation:main", "quality on your images: recall per edit, calibrated thresholds"),
        "bench": ("benchmark:main", "speed on this machine: stages, throughput, latency as the gallery grows"),
        "backfill": ("lifecycle.cli:backfill_main", "index what a bucket already holds, resumably"),
        "reconcile": ("lifecycle.cli:reconcile_main", "find and repair drift between the bucket and both indexes"),
    }
    for name, (module, summary) in delegated.items():
        command = commands.add_parser(name, help=f"{summary} (see `lookalike {name} --help`)", add_help=False)
        command.set_defaults(run=_delegate(module), delegated=True)
    return parser


def _delegate(target: str) -> Callable[[argparse.Namespace], int]:
    """Commands with their own parsers live in their own modules, imported only when used."""
    module, function = target.split(":")

    def run(args: argparse.Namespace) -> int:
        import importlib

        entry = getattr(importlib.import_module(f"lookalike.{module}"), function)
        options = {"owner": args.owner} if module == "devserver" else {}
        return int(entry(args.rest, settings=_settings(args), **options) or 0)

    return run


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    return settings.with_data_dir(args.data_dir) if args.data_dir else settings


def _services(args: argparse.Namespace) -> Services:
    from lookalike.bootstrap import build_services

    return build_services(_settings(args))


def _console() -> Console:
    from rich.console import Console

    return Console()


def image_files(paths: Sequence[Path]) -> Iterator[tuple[Path, str]]:
    """(file, name) for every file under ``paths``; a folder's files are named relative to it."""
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                relative = file.relative_to(path)
                if not any(part.startswith(".") for part in relative.parts):
                    yield file, f"{path.resolve().name}/{relative.as_posix()}"
        elif path.is_file():
            yield path, path.name
        else:
            raise LookalikeError(f"no such file or folder: {path}")


def cmd_index(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from lookalike.services.indexing import IndexRequest

    services = _services(args)
    console = _console()
    files = list(image_files(args.paths))
    counts: Counter[str] = Counter()
    rejected: list[tuple[str, ImageRejected]] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("indexing", total=len(files))
        for start in range(0, len(files), INDEX_BATCH):
            batch = files[start : start + INDEX_BATCH]
            requests = [
                IndexRequest(owner_key(args.owner, name, services.settings.owner_prefix), path.read_bytes(), args.owner)
                for path, name in batch
            ]
            outcomes = services.indexer.index_many(requests, skip_unchanged=True)
            for request, outcome in zip(requests, outcomes, strict=True):
                if isinstance(outcome, ImageRejected):
                    rejected.append((request.key, outcome))
                    counts["rejected"] += 1
                    continue
                counts[outcome.status] += 1
                if services.settings.local_objects and outcome.status == "indexed":
                    services.objects.put(request.key, request.data)
            progress.advance(task, len(batch))
    console.print(
        f"indexed {counts['indexed']}, unchanged {counts['unchanged']}, rejected {counts['rejected']}"
        f" (data in {services.settings.data_dir})"
    )
    for key, rejection in rejected:
        console.print(f"  rejected {key}: [bold]{rejection.reason}[/] - {rejection.message}", highlight=False)
    services.close()
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    services = _services(args)
    defaults = services.settings.thresholds
    thresholds = Thresholds(
        duplicate_distance=_pick(args.duplicate_distance, defaults.duplicate_distance),
        duplicate_similarity=_pick(args.duplicate_similarity, defaults.duplicate_similarity),
        min_similarity=_pick(args.min_similarity, defaults.min_similarity),
    )
    options = {"page": args.page, "page_size": args.page_size, "thresholds": thresholds}
    if args.key:
        result = services.searcher.search_key(args.image, args.owner, **options)
    else:
        data = Path(args.image).read_bytes()
        result = services.searcher.search_image(data, args.owner, **options)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_result(_console(), result)
    services.close()
    return 0


def _pick(value: T | None, default: T) -> T:
    return default if value is None else value


def print_result(console: Console, result: SearchResult) -> None:
    from rich.table import Table

    q = result.query
    console.print(
        f"query sha256 {q.sha256[:12]}…  pHash {q.phash}  {q.width}x{q.height}  borders trimmed: {q.trim}",
        highlight=False,
    )
    for title, hits in (("exact", result.exact), ("duplicates", result.duplicates), ("similar", result.similar)):
        if not hits:
            console.print(f"[bold]{title}[/]: none")
            continue
        table = Table(title=title, title_justify="left")
        for column in ("key", "similarity", "distance", "signals", "trim"):
            table.add_column(column)
        for hit in hits:
            table.add_row(*_row(hit))
        console.print(table)
    if result.has_more:
        console.print(f"more similar images: --page {result.page + 1}")
    for warning in result.warnings:
        console.print(f"[yellow]warning[/]: {warning}")


def _row(hit: Hit) -> list[str]:
    return [
        hit.key,
        "" if hit.similarity is None else f"{hit.similarity:.3f}",
        "" if hit.distance is None else str(hit.distance),
        ",".join(hit.signals),
        hit.trim or "",
    ]


def cmd_delete(args: argparse.Namespace) -> int:
    services = _services(args)
    services.indexer.delete(args.key)
    if services.settings.local_objects:
        services.objects.delete(args.key)
    print(f"deleted {args.key}")
    services.close()
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    services = _services(args)
    s = services.settings
    model = services.indexer.extractor.model
    rows = {
        "data dir": str(s.data_dir) if s.embedded else "-",
        "hash index": f"OpenSearch {s.opensearch_url} / {s.opensearch_index}"
        if s.opensearch_url
        else str(s.sqlite_path),
        "vector index": f"Milvus {s.milvus_uri} / {s.milvus_collection_for(model.name)}"
        if s.milvus_uri
        else str(s.milvus_lite_path),
        "model": f"{model.name} ({s.model_path})",
        "images (hash index)": str(services.hashes.count()),
        f"images of {args.owner}": str(services.hashes.count(args.owner)),
        "vectors (vector index)": str(services.vectors.count()),
    }
    for name, value in rows.items():
        print(f"{name:>24}: {value}")
    services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
