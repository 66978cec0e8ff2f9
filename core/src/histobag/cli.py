"""The ``histobag`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from histobag import __version__, validation
from histobag.analysis.cli import add_commands as add_analysis_commands
from histobag.bags.claims import DEFAULT_CLAIM_TIMEOUT, live_claims
from histobag.bags.report import (
    PARTS_DIR,
    REPORT_NAME,
    format_summary,
    merge_run_report,
    write_run_report,
)
from histobag.cluster import (
    cpu_threads_per_rank,
    limit_cpu_threads,
    parse_shard,
    rank_device,
    run_id,
    slurm_array_shard,
    stop_on_sigterm,
    torchrun_launch,
)
from histobag.errors import ArgumentError, ConfigError, EmptyRunWarning, HistobagError
from histobag.extractors.registry import extractor_info, list_extractors, require_tile_encoder
from histobag.new_pack import TEMPLATES as PACK_FILES
from histobag.new_pack import create_pack, pack_names
from histobag.plugins import disabled_packs, plugin_failures
from histobag.specs import DEFAULT_TISSUE_DETECTOR, EXTRACTOR_KINDS
from histobag.tile_transforms import resolve_tile_transforms
from histobag.validation import MPP_RANGE


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*map(str, row)) for row in rows]
    return "\n".join(s.rstrip() for s in out)


def cmd_list(args: argparse.Namespace) -> int:
    """Print the installed extractors as a table."""
    failures = plugin_failures()  # first, so they are printed below instead of warned
    names = list_extractors(license=args.license, tag=args.tag, pack=args.pack, kind=args.kind)
    rows = []
    for name in names:
        spec = extractor_info(name)
        dims = spec.num_features if spec.num_features is not None else "?"
        gated = "yes" if spec.gated else "no"
        rows.append((name, spec.kind, spec.pack, spec.license, dims, gated))
    if args.json:
        print(json.dumps([extractor_info(n).to_dict() for n in names], indent=2))
    elif rows:
        print(_table(("name", "kind", "pack", "licence", "dims", "gated"), rows))
    else:
        print(
            "No extractors installed"
            + (
                " match these filters."
                if (args.license or args.tag or args.pack or args.kind)
                else "."
            )
            + " Install a pack, e.g. `pip install histobag-apache`."
        )
    for failure in failures:
        print(f"warning: {failure}", file=sys.stderr)
        if args.debug and failure.traceback:
            print(failure.traceback.rstrip(), file=sys.stderr)
    for pack in disabled_packs() if args.debug else []:
        print(
            f"disabled by HISTOBAG_DISABLE_PACKS: {pack.distribution} {pack.version} "
            f"(entry point {pack.entry_point})",
            file=sys.stderr,
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print everything known about one extractor."""
    spec = extractor_info(args.name)
    if args.json:
        print(json.dumps(spec.to_dict(), indent=2))
        return 0
    weights = "none (built without weights)"
    if spec.hf_repo:
        access = (
            "gated: request access on the model page, then `hf auth login`"
            if spec.gated
            else "public"
        )
        weights = f"{spec.weights_url} file {spec.hf_filename} ({access})"
    elif spec.weights_required:
        weights = "pass weights=/path/to/checkpoint (downloaded per architecture, if any)"
        if spec.weights_help:
            weights += f"; {spec.weights_help}"
    fields = [
        ("name", spec.name),
        ("aliases", ", ".join(spec.aliases) or "-"),
        ("description", spec.description or "-"),
        ("kind", _kind_line(spec)),
        ("pack", f"{spec.pack} {spec.version}".strip()),
        ("licence", f"{spec.license}  {spec.license_url}".strip()),
        ("features", spec.num_features if spec.num_features is not None else "depends on args"),
        ("input size", spec.input_size if spec.kind == "tiles" else "tile features"),
        ("tags", ", ".join(spec.tags) or "-"),
        ("weights", weights),
        ("official sha256", spec.sha256 or "-"),
        ("model kwargs", ", ".join(spec.model_kwargs) or "-"),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        print(f"{key:<{width}}  {value}")
    if spec.kind == "tiles":
        print("\npreprocessing (default):")
        print("  " + spec.preprocessing.describe().replace("\n", "\n  "))
    elif spec.slide_input is not None:
        print("\nneeds:")
        print(f"  {spec.slide_input.describe()}")
        print(f"  coordinates: {spec.slide_input.coordinates}")
    print("\ncitation:")
    print("  " + (spec.citation or "-").replace("\n", "\n  "))
    return 0


def _kind_line(spec: Any) -> str:
    """``histobag info``'s line saying what the model consumes."""
    if spec.kind == "tiles":
        return "tiles (a tile encoder: tiles in, one feature vector per tile)"
    if spec.slide_input is not None:
        source = spec.slide_input.describe()
    else:
        source = f"{spec.tile_encoder} features" if spec.tile_encoder else "tile features"
    return f"{spec.kind} (a slide encoder: consumes {source}; not for feature bags)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``histobag`` command."""
    parser = argparse.ArgumentParser(
        prog="histobag", description="Feature bags from whole-slide images."
    )
    parser.add_argument("--version", action="version", version=f"histobag {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the installed extractors")
    p.add_argument("--license", help="only this SPDX licence, e.g. apache-2.0")
    p.add_argument("--tag", help="only models with this tag, e.g. foundation, imagenet")
    p.add_argument("--pack", help="only models from this distribution, e.g. histobag-gpl")
    p.add_argument(
        "--debug",
        action="store_true",
        help="also print failed packs' tracebacks and packs HISTOBAG_DISABLE_PACKS switched off",
    )
    p.add_argument(
        "--kind",
        choices=EXTRACTOR_KINDS,
        help="only tile encoders (tiles) or slide encoders (tile_features)",
    )
    p.add_argument("--json", action="store_true", help="print specs as JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="show an extractor's licence, weights, preprocessing, citation")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print the spec as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "extract",
        help="write one feature bag per slide (and, with --slide-encoder, slide embeddings)",
    )
    p.add_argument(
        "--extractor",
        help="registered tile encoder (with --slide-encoder: default the one it needs)",
    )
    p.add_argument("--weights", help="local checkpoint (default: the official download)")
    slide = p.add_argument_group(
        "slide embeddings",
        "--slide-encoder NAME runs the tile encoder it needs, at the tile size and "
        "magnification it was trained on, into OUTDIR/bags/<tile encoder> (matching bags "
        "there are reused), then writes one embedding per slide and a table to "
        "OUTDIR/slide_embeddings/<slide encoder>.",
    )
    slide.add_argument("--slide-encoder", help="slide encoder (histobag list --kind tile_features)")
    slide.add_argument(
        "--slide-encoder-weights", help="local slide encoder checkpoint (default: download)"
    )
    slide.add_argument(
        "--force",
        action="store_true",
        help="use another tile encoder, tile size or magnification than the slide encoder was "
        "trained on (recorded with the embeddings)",
    )
    slide.add_argument(
        "--table", default="h5", choices=("h5", "parquet"), help="format of the embeddings table"
    )
    p.add_argument(
        "--device",
        default="auto",
        help="where the model runs: cpu, cuda, cuda:1, mps... (auto: CUDA if available, else "
        "MPS, else the CPU)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="the model's arithmetic (auto: the model's reduced precision where the device "
        "has it, e.g. bf16 on most GPUs; fp32 on most CPUs). Recorded in bags_config.json",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model: faster on some models and devices, after a start-up "
        "of tens of seconds (see docs/bags.md)",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--slides", help="folder of slides")
    where.add_argument("--project", help="histobag project folder")
    p.add_argument("--annotations", help="CSV with a 'slide' column (with --slides)")
    p.add_argument("--roi", help="folder of ROI files <slide>.geojson/.json/.csv (with --slides)")
    p.add_argument(
        "--tile-px", type=int, help="tile side in pixels (with --slide-encoder: its own)"
    )
    p.add_argument(
        "--tile-um", help="tile side in microns, or e.g. 20x (with --slide-encoder: its own)"
    )
    p.add_argument("--outdir", help="bags folder (default with --project: <project>/bags/...)")
    p.add_argument("--writer", default="pt", help="pt | h5 | safetensors | a pack's writer")
    p.add_argument(
        "--normalizer",
        help="stain normalizer, slideflow's names and meaning (preset v3): macenko | "
        "macenko_fast | reinhard | reinhard_fast | reinhard_mask | reinhard_fast_mask | vahadane",
    )
    p.add_argument(
        "--tile-transform",
        action="append",
        metavar="NAME",
        help="a registered tile transform, applied after the normalizer (repeat: in order)",
    )
    p.add_argument(
        "--mpp",
        type=float,
        help="level-0 microns per pixel for slides that record none (overrides every slide's)",
    )
    p.add_argument(
        "--reader",
        default="auto",
        help="slide reader: auto (the first installed reader that opens each slide) or a name "
        "(histobag slides --readers)",
    )
    p.add_argument(
        "--tissue",
        default=DEFAULT_TISSUE_DETECTOR,
        help="tissue detector on each slide's thumbnail: hsv (the default: pale tissue kept, "
        "pen marks and dust dropped), otsu (Otsu on saturation, the default before) or a "
        "pack's; none: every grid tile that passes the pixel filters",
    )
    p.add_argument("--batch-size", type=int, default=32, help="tiles per model call (>= 1)")
    p.add_argument("--workers", default="auto", help="tile-reading processes (0-1024), or auto")
    p.add_argument("--min-tiles", type=int, default=0)
    p.add_argument("--max-tiles", type=int, default=0)
    p.add_argument("--source", default="auto", choices=("auto", "slides", "tfrecords"))
    p.add_argument("--overwrite", action="store_true", help="replace bags of another config")
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-hash finished bags before skipping them; redo those that changed",
    )
    p.add_argument(
        "--strict", action="store_true", help="exit 1 when no bag results (an empty dataset)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cluster = p.add_argument_group(
        "cluster runs",
        "Any number of processes may share one --outdir: each slide is claimed before it is "
        "extracted (see docs/distributed.md).",
    )
    cluster.add_argument(
        "--shard",
        metavar="I/N",
        help="start with shard I of N of the slides (1-based), then help with the others; "
        "default in a SLURM job array: its task's shard",
    )
    cluster.add_argument(
        "--distributed",
        action="store_true",
        help="inside a torch.distributed launch (torchrun sets this up by itself): each rank "
        "runs on cuda:LOCAL_RANK (or its share of the CPU cores) and starts on its own shard",
    )
    cluster.add_argument(
        "--claim-timeout",
        type=float,
        default=DEFAULT_CLAIM_TIMEOUT,
        metavar="SECONDS",
        help="take over a slide whose process sent no heartbeat for this long (default "
        "%(default)s)",
    )
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser(
        "report", help="merge a bags folder's run reports into run_report.json and print it"
    )
    p.add_argument("outdir", help="bags folder")
    p.add_argument("--json", action="store_true", help="print the merged report as JSON")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "verify", help="re-hash a bags folder's bags; list damaged, missing, unrecorded ones"
    )
    p.add_argument("outdir", help="bags folder (with bags_manifest.json)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "slides",
        help="list the slides of a folder: reader, size, levels, mpp, or why one does not open",
    )
    p.add_argument("folder", nargs="?", help="folder of slides (searched recursively)")
    p.add_argument("--reader", default="auto", help="slide reader (default: auto)")
    p.add_argument("--readers", action="store_true", help="list the installed slide readers")
    p.add_argument(
        "--thumbnails",
        metavar="OUT",
        help="also write <slide>.thumbnail.png and <slide>.tissue.png (tissue mask) into OUT",
    )
    p.add_argument(
        "--tissue",
        default=DEFAULT_TISSUE_DETECTOR,
        help="tissue detector for --thumbnails (hsv, otsu, ...)",
    )
    p.add_argument("--mpp", type=float, help="level-0 µm/px for slides that record none")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_slides)

    p = sub.add_parser("demo", help="sample slides -> feature bags, on any machine")
    p.add_argument("--extractor", default="resnet18_imagenet", help="extractor to run")
    p.add_argument("--outdir", default="histobag-demo", help="where demo outputs go")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "new-pack",
        help="write histobag-NAME/, a pack to publish: entry point, plugin, example model, "
        "parity test, LICENSE placeholder, README",
    )
    p.add_argument(
        "name", metavar="NAME", help="lower-case pack name without the histobag- prefix, e.g. acme"
    )
    p.add_argument("--dir", default=".", help="folder to write histobag-NAME/ into (default: .)")
    p.add_argument(
        "--license",
        default="MIT",
        help="SPDX licence of the code and example weights (default: %(default)s); LICENSE "
        "stays a placeholder to replace",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rewrite the template's files in an existing histobag-NAME/ (others are kept)",
    )
    p.set_defaults(func=cmd_new_pack)

    add_analysis_commands(sub)
    return parser


def _check_extract_args(args: argparse.Namespace) -> dict[str, Any]:
    """Check every option of ``extract`` before anything is built or read.

    Returns:
        The checked values: ``tile_um`` (a number or ``"20x"``), ``num_workers``.

    Raises:
        ArgumentError: An option is out of range, ``--slides`` is a file, or ``--outdir`` is a
            file or lies under one.
        StorageError: ``--outdir`` is not writable.
    """
    if args.slide_encoder is None:
        missing = [
            flag
            for flag, value in (
                ("--extractor", args.extractor),
                ("--tile-px", args.tile_px),
                ("--tile-um", args.tile_um),
            )
            if value is None
        ]
        if missing:
            raise ArgumentError(
                f"extract needs {', '.join(missing)} (or --slide-encoder NAME, which brings "
                "its own)."
            )
    elif args.project is None and not args.outdir:
        raise ArgumentError("--outdir is required with --slides.")
    if args.slide_encoder is not None:
        # Deferred: the check reads slide geometry helpers, which `histobag list` does not need.
        from histobag.slide_encoding.plan import plan_slide_run

        plan = plan_slide_run(
            args.slide_encoder,
            args.outdir or Path(args.project) / "slide_runs",
            tile_encoder=args.extractor,
            tile_px=args.tile_px,
            tile_um=args.tile_um,
            force=args.force,
        )
        args.extractor, args.tile_px, args.tile_um = plan.tile_encoder, plan.tile_px, plan.tile_um
        args.slide_plan = plan
    _, tile_um = validation.check_tile_size(
        args.tile_px, args.tile_um, names=("--tile-px", "--tile-um")
    )
    validation.check_batch_size(args.batch_size, name="--batch-size")
    workers = validation.check_num_workers(args.workers, name="--workers")
    validation.non_negative_int("--min-tiles", args.min_tiles)
    validation.non_negative_int("--max-tiles", args.max_tiles)
    if args.slides is not None:
        validation.check_slide_folder(args.slides, name="--slides")
        if not args.outdir:
            raise ArgumentError("--outdir is required with --slides.")
    if args.project is not None and args.roi is not None:
        raise ArgumentError(
            "--roi is for --slides; a project keeps its own ROI folder (Project.create(roi=...))."
        )
    if args.outdir:
        validation.check_output_dir(args.outdir, name="--outdir")
    if not args.claim_timeout > 0:
        raise ArgumentError(f"--claim-timeout must be > 0 seconds, not {args.claim_timeout}.")
    launch = torchrun_launch()
    if args.distributed and launch is None:
        raise ArgumentError(
            "--distributed needs a torch.distributed launch (RANK and WORLD_SIZE set, as "
            "torchrun does): torchrun --nproc-per-node=N -m histobag extract ..."
        )
    if args.shard and launch is not None:
        raise ArgumentError(
            "--shard is for independent processes (SLURM arrays, shells); under torchrun each "
            "rank takes its shard from RANK and WORLD_SIZE."
        )
    if args.shard:
        shard = parse_shard(args.shard)
    elif launch is not None:
        shard = launch.shard
    else:
        shard = slurm_array_shard()
    return {"tile_um": tile_um, "num_workers": workers, "launch": launch, "shard": shard}


def cmd_extract(args: argparse.Namespace) -> int:
    """Extract feature bags.

    Exit status: 0 when every slide has a bag (and, with ``--slide-encoder``, an embedding);
    1 when a slide failed (after finishing the others), or with ``--strict`` when no bag
    results at all; 2 for bad options.
    """
    args.slide_plan = None
    checked = _check_extract_args(args)
    require_tile_encoder(args.extractor)  # a slide encoder is refused before any slide is read
    # Deferred: slides (OpenSlide, pandas) and the engine (torch) load only when extracting.
    from histobag.bags.generate import build_extractor_for_run, generate_feature_bags
    from histobag.dataset import Dataset
    from histobag.project import Project

    tissue = None if args.tissue == "none" else args.tissue
    if args.project:
        project = Project(args.project)
        dataset = project.dataset(
            args.tile_px, checked["tile_um"], tissue=tissue, mpp=args.mpp, reader=args.reader
        )
    else:
        dataset = Dataset(
            args.slides,
            args.annotations,
            args.tile_px,
            checked["tile_um"],
            roi=args.roi,
            tissue=tissue,
            mpp=args.mpp,
            reader=args.reader,
        )
    tile_transforms = resolve_tile_transforms(args.tile_transform)  # a typo costs no model build
    device = None if args.device == "auto" else args.device
    launch = checked["launch"]
    if launch is not None:  # a torchrun rank: its own GPU, or its share of the CPU cores
        device = rank_device(launch, device)
        if device == "cpu":
            limit_cpu_threads(cpu_threads_per_rank(launch.local_world_size))
    extractor = build_extractor_for_run(
        args.extractor,
        args.tile_px,
        weights=args.weights,
        device=device,
        precision=None if args.precision == "auto" else args.precision,
        compile=args.compile,
    )
    options = dict(
        normalizer=args.normalizer,
        tile_transforms=tile_transforms,
        writer=args.writer,
        batch_size=args.batch_size,
        num_workers=checked["num_workers"],
        min_tiles=args.min_tiles,
        max_tiles=args.max_tiles,
        overwrite=args.overwrite,
        source=args.source,
        progress=not args.no_progress,
        verify=args.verify,
        shard=checked["shard"],
        claim_timeout=args.claim_timeout,
        run_id=run_id(launch),
    )
    with warnings.catch_warnings(), stop_on_sigterm():  # warnings printed below, once
        warnings.simplefilter("ignore", EmptyRunWarning)
        if args.project:
            report = project.generate_feature_bags(
                extractor, dataset, outdir=args.outdir or "auto", **options
            )
        else:
            outdir = args.slide_plan.bags_dir if args.slide_plan else args.outdir
            report = generate_feature_bags(extractor, dataset, outdir, **options)
    # The whole run's report: every process's, merged (the same table for one process).
    merged = merge_run_report(report.outdir, report.owner.get("token")) or report.to_dict()
    status = _print_report(merged, strict=args.strict)
    if args.slide_plan is None:
        return status
    return max(status, _slide_embeddings(args, report.outdir, device))


def _slide_embeddings(args: argparse.Namespace, bags_dir: Path, device: Any) -> int:
    """The slide stage of ``extract --slide-encoder``: every bag of ``bags_dir`` embedded."""
    # Deferred: the slide encoders import torch and the engine.
    from histobag.extractors.registry import build_feature_extractor
    from histobag.slide_encoding import generate_slide_embeddings

    plan = args.slide_plan
    encoder = build_feature_extractor(
        plan.slide_encoder,
        weights=args.slide_encoder_weights,
        device=device,
        precision=args.precision,
    )
    outdir = plan.embeddings_dir
    if args.project and not args.outdir:
        outdir = Path(args.project) / "slide_embeddings" / plan.embeddings_dir.name
    report = generate_slide_embeddings(
        encoder,
        bags_dir,
        outdir,
        force=args.force,
        overwrite=args.overwrite,
        table=args.table,
    )
    print(f"slide embeddings ({plan.slide_encoder}): {report.summary()}")
    for slide, reason in report.failed.items():
        print(f"error: slide {slide}: {reason}", file=sys.stderr)
    for mismatch in report.check.mismatches:
        print(f"warning: forced: {mismatch}", file=sys.stderr)
    return 0 if report.ok else 1


def _print_report(report: dict[str, Any], strict: bool = False) -> int:
    """Print a (merged) run report's table and warnings; returns the exit status."""
    print(format_summary(report))
    for message in report["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    if report["failed"]:
        print(
            f"{report['failed']} slide(s) failed; see {report['outdir']}/{REPORT_NAME}",
            file=sys.stderr,
        )
        return 1
    if strict and not (report["done"] or report["skipped"]):
        print("--strict: exit status 1, as no bag resulted from this run.", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Merge a bags folder's run reports into ``run_report.json`` and print them.

    Exit status: 0 when no slide failed, 1 when one did, 2 when the folder has no run reports.
    """
    outdir = Path(args.outdir)
    if not outdir.is_dir():
        raise ArgumentError(f"{outdir} is not a folder; give a bags folder.")
    board_live = live_claims(outdir)
    merged = write_run_report(outdir, live_claims=board_live)
    if merged is None:
        raise ConfigError(
            f"{outdir} has no run reports ({PARTS_DIR}/): run `histobag extract` into it first."
        )
    if args.json:
        print(json.dumps(merged, indent=2))
        return 1 if merged["failed"] else 0
    return _print_report(merged)


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-hash a bags folder's bags; exit 1 when any is damaged, missing or unrecorded."""
    # Deferred: reading bags imports numpy, which `histobag list` does not need.
    from histobag.bags.manifest import verify_bags

    report = verify_bags(args.outdir)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
    return 0 if report.ok else 1


def cmd_slides(args: argparse.Namespace) -> int:
    """List a folder's slides (a health check before a long run); exit 1 if one does not
    open, 2 for bad options."""
    # Deferred: opening slides loads OpenSlide and Pillow, which `histobag list` does not need.
    from histobag.plugins import slide_reader_specs
    from histobag.slide.inventory import inspect_slide, save_thumbnails, slide_suffixes, walk_slides

    if args.readers:
        # In the order reader="auto" tries them; opt-in readers (used only by name) last.
        specs = sorted(
            slide_reader_specs().values(), key=lambda s: (not s.auto, -s.priority, s.name)
        )
        if args.json:
            print(json.dumps([dataclasses.asdict(s) for s in specs], indent=2))
            return 0
        rows = [
            (
                s.name,
                str(s.priority) if s.auto else "by name",
                " ".join(s.suffixes) or "any file",
                " ".join(s.schemes) or "-",
                s.license or "-",
                s.distribution,
            )
            for s in specs
        ]
        print(_table(("reader", "priority", "suffixes", "schemes", "licence", "pack"), rows))
        return 0
    if not args.folder:
        raise ArgumentError("give a folder of slides (or --readers)")
    folder = validation.check_slide_folder(args.folder, name="folder")
    infos = [
        inspect_slide(path, args.reader) for path in walk_slides(folder, slide_suffixes(dicom=True))
    ]
    thumbnails: dict[str, str] = {}
    if args.thumbnails:
        for info in infos:
            if info.ok:
                try:
                    save_thumbnails(
                        info.path,
                        args.thumbnails,
                        reader=info.reader or "auto",
                        tissue=None if args.tissue == "none" else args.tissue,
                        mpp=args.mpp,
                    )
                except HistobagError as exc:
                    thumbnails[info.path] = str(exc)
    if args.json:
        print(
            json.dumps(
                [{**i.to_dict(), "thumbnail_error": thumbnails.get(i.path)} for i in infos],
                indent=2,
            )
        )
    else:
        rows = []
        for info in infos:
            size = "x".join(map(str, info.dimensions)) if info.dimensions else "-"
            mpp = f"{info.mpp:.4g}" if info.mpp else "-"
            status = "ok" if info.ok else info.error
            if info.ok and not (MPP_RANGE[0] <= (info.mpp or 0) <= MPP_RANGE[1]):
                status = "ok, but no plausible mpp recorded: pass --mpp"
            if info.path in thumbnails:
                status = f"{status}; thumbnail: {thumbnails[info.path]}"
            rows.append(
                (
                    os.path.relpath(info.path, folder),
                    info.reader or "-",
                    size,
                    str(info.levels or "-"),
                    mpp,
                    status,
                )
            )
        print(
            _table(("slide", "reader", "size", "levels", "mpp", "status"), rows)
            if rows
            else f"No slides found in {folder}."
        )
    return 0 if all(i.ok for i in infos) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the end-to-end demo."""
    # Deferred: the demo needs everything (slides, torch, the analysis extra).
    from histobag.demo import run_demo

    return run_demo(extractor=args.extractor, outdir=args.outdir)


def cmd_new_pack(args: argparse.Namespace) -> int:
    """Write a new pack and say what to do next."""
    names = pack_names(args.name)
    root = create_pack(args.name, args.dir, license=args.license, force=args.force)
    shown = str(root) if root.is_absolute() else os.path.join(".", root)
    print(f"Wrote {shown}/ ({names.distribution}, model {names.model}, licence {args.license}):")
    print("\n".join(f"  {path.format(package=names.package)}" for path in PACK_FILES))
    print(
        f"\nNext:\n  pip install {shown}\n  histobag list --pack {names.distribution}\n"
        f"  python -m pytest {shown}/tests\n"
        f"Replace LICENSE (a placeholder) and every TODO (grep -rn TODO {shown}) before "
        "publishing."
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HistobagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
