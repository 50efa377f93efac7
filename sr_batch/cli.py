"""sr-batch command line. Thin: the library does the work; this maps errors to exit codes.

Exit codes: 0 all images ok, 1 some images failed, 2 bad usage or configuration,
3 the run could not start or finish (storage, model, Ray).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from sr_batch.errors import SrBatchError

EXIT_OK, EXIT_IMAGES_FAILED, EXIT_USAGE, EXIT_RUN_FAILED = 0, 1, 2, 3


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from sr_batch import config as c

    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="directories, globs or fsspec URIs of images, or one manifest file")
    p.add_argument("--output", "-o", required=True, help="output root (fsspec URI)")
    p.add_argument("--model", default="auto",
                   help="'auto' (the default: each image gets the clean model or `real` at a denoise "
                        "strength, by its JPEG quality, blocking and noise), 'clean' (the zoo's default "
                        "for the scale, for every image), a zoo name, 'bicubic', or a path/URI to a "
                        ".keras or .onnx file")
    p.add_argument("--scale", type=int, default=None, choices=c.SCALES,
                   help="upscaling factor (default: a model file's own, as its probe measures it; "
                        "for the zoo, 2)")
    p.add_argument("--outscale", type=float, default=None, metavar="F",
                   help="output size as a factor of the input, any F >= 1 (e.g. 1.5, 8): the model runs "
                        "at its scale (twice for x8: x4 then x2), then a Lanczos resize to the exact size")
    p.add_argument("--width", type=int, default=None, metavar="PX",
                   help="output width (the height keeps the aspect unless --height is given too)")
    p.add_argument("--height", type=int, default=None, metavar="PX",
                   help="output height (the width keeps the aspect unless --width is given too)")
    p.add_argument("--fit", default=None, metavar="WxH",
                   help="the largest output with the input's aspect inside W x H, e.g. 3840x2160")
    p.add_argument("--denoise", type=float, default=None, metavar="S",
                   help="for models shipped with a denoise pair (`real`): how hard to clean JPEG "
                        "blocks and noise, 0 (keep texture) to 1 (strongest); default 0.5")
    p.add_argument("--tile-size", type=int, default=None, metavar="PX",
                   help=f"tile side in input px (default: two, {c.DEFAULT_TILE_CORE} and {c.LARGE_TILE_CORE} "
                        "+ 2 x overlap, each image taking the one that runs fewer padded pixels)")
    p.add_argument("--tile-overlap", type=int, default=None, metavar="PX",
                   help="context per tile side (default: the model's receptive-field radius)")
    p.add_argument("--whole-image", action="store_true",
                   help="run each image through the model in one piece (no tile seams at all; the "
                        "whole image must fit the device's memory)")
    p.add_argument("--batch-size", type=int, default=c.DEFAULT_BATCH_SIZE, metavar="N",
                   help="tiles per model call (of the smaller tile; larger tiles go in batches of the same pixel count)")
    p.add_argument("--images-per-call", "--images-per-batch", dest="images_per_call", type=int,
                   default=None, metavar="N",
                   help="images per actor call; their tiles share model batches (default: about "
                        f"{c.PIXELS_PER_CALL / 1e6:g} MP of input a call, from a sample of the "
                        f"images' headers, 1 to {c.DEFAULT_IMAGES_PER_CALL} images; "
                        "--images-per-batch is its old name)")
    p.add_argument("--format", default="keep", choices=c.FORMATS)
    p.add_argument("--quality", type=int, default=95, help="jpeg/webp quality")
    p.add_argument("--png-compress-level", type=int, default=1, metavar="0-9")
    p.add_argument("--actors", default=None, metavar="N|MIN-MAX",
                   help="actor pool size (default: fit the cluster, keeping 1 CPU for I/O tasks)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, metavar="F")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="F")
    p.add_argument("--arrangement", default="auto", choices=c.ARRANGEMENTS,
                   help="fused: decode, encode, write and metrics inside the model actor (fastest on "
                        "one machine); staged: as Ray Data CPU stages on any node, so GPUs only upscale; "
                        "auto (default): staged when actors take GPUs")
    p.add_argument("--executor", default="auto", choices=c.EXECUTORS,
                   help="ray: an actor pool on Ray; local: every step in this process, no Ray; "
                        "auto (default): local for a local run of one actor call's images")
    p.add_argument("--tf-threads", type=int, default=0, metavar="N",
                   help="TensorFlow threads per actor (default: local Ray splits the cores "
                        "between actors; a cluster uses the actor's CPU share)")
    p.add_argument("--max-pixels", type=int, default=c.DEFAULT_MAX_PIXELS,
                   help="input pixel limit; larger tiled/stripped TIFFs are streamed in bounded "
                        "memory to a tiled BigTIFF, larger images of other formats fail as "
                        "too_many_pixels")
    p.add_argument("--max-output-pixels", type=int, default=c.DEFAULT_MAX_OUTPUT_PIXELS, metavar="N",
                   help="output pixel limit per image (streamed TIFFs too); an image whose output "
                        f"would be larger fails as too_many_pixels (default {c.DEFAULT_MAX_OUTPUT_PIXELS:,})")
    p.add_argument("--alpha", default="model", choices=c.ALPHA_MODES,
                   help="upscale an alpha channel with the model (as a grey image) or bicubic")
    p.add_argument("--self-ensemble", action="store_true",
                   help="average the model over the 8 flips/rotations of each tile "
                        "(about +0.1-0.2 dB Y-PSNR for 8x the model time)")
    p.add_argument("--precision", default="float32", choices=c.PRECISIONS,
                   help="model arithmetic: bfloat16 runs the convolutions in bfloat16 (GPUs, "
                        "CPUs with AMX: about 2x faster) at a small PSNR cost (README)")
    p.add_argument("--metrics", action="append", default=[], choices=c.OPTIONAL_METRICS,
                   help="also compute this metric for every image: niqe (no-reference naturalness of "
                        "the output and of bicubic; adds about a quarter of the default model's time)")
    p.add_argument("--provenance", default="xmp", choices=c.PROVENANCE_MODES,
                   help="xmp (default): each output's XMP says a model enhanced it (IPTC Digital Source "
                        "Type), from which source (URI and SHA-256), with which model (and its SHA-256), "
                        "settings and run; none: write no provenance")
    p.add_argument("--provenance-source", default="uri", choices=c.PROVENANCE_SOURCES,
                   help="how the XMP names the source: uri (its URI and SHA-256, the default) or "
                        "hash (its SHA-256 only, where paths are private)")
    p.add_argument("--c2pa-sign", default=None, metavar="CERT,KEY",
                   help="also sign a C2PA manifest into each output (the same facts, the source as its "
                        "ingredient) with this PEM certificate chain and private key; needs the c2pa extra")
    p.add_argument("--retries", type=int, default=3, help="retries of transient storage errors")
    p.add_argument("--read-timeout-s", type=float, default=60.0, metavar="S",
                   help="seconds an http(s)/s3 read may wait for the server, per attempt (default 60)")
    p.add_argument("--run-id", default=None, help="name of the run (default: UTC time + random)")
    p.add_argument("--address", default=None,
                   help="Ray address ('auto', ray://HOST:10001); default: local Ray")
    p.add_argument("--force", action="store_true",
                   help="reprocess every image, even those finished earlier with the same settings")
    p.add_argument("--lock", action="store_true",
                   help="hold OUT/nightly.lock during the run (scheduled runs: never two at once)")
    p.add_argument("--stats-flush-s", type=float, default=30.0, metavar="S",
                   help="seconds between stats flushes (bounds what a killed driver must redo)")
    p.add_argument("--dry-run", action="store_true",
                   help="plan only: print how many images (and megapixels) would run and why "
                        "(new, changed source, changed settings, failed before), how many would be "
                        "skipped, and about how long; write nothing, start no Ray")
    p.add_argument("--plan-manifest", default=None, metavar="FILE",
                   help="with --dry-run: write the rows that would run to FILE (.parquet, .csv or "
                        ".jsonl), a manifest `sr-batch run FILE --output OUT` runs")


def _job_config(args: argparse.Namespace):
    """JobConfig from parsed options: CLI flags and config fields share names."""
    import dataclasses

    from sr_batch.config import JobConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(JobConfig)
              if hasattr(args, f.name)}
    return JobConfig(**{**values, "sources": tuple(args.sources)})


# Fields that name where a run happens rather than how; a submitted job gets its own.
_NOT_FORWARDED = {"sources", "output", "address", "run_id", "progress_s", "lock", "dry_run",
                  "plan_manifest"}


def config_to_options(config) -> list[str]:
    """The `sr-batch run` options that reproduce a config's non-default settings."""
    import dataclasses

    options = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in _NOT_FORWARDED or value == field.default:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            options.append(flag)
        elif field.name == "actors":  # (min, max)
            options += [flag, f"{value[0]}-{value[1]}"]
        elif isinstance(value, tuple):  # a repeated option
            for item in value:
                options += [flag, str(item)]
        else:
            options += [flag, str(value)]
    return options


def cmd_run(args: argparse.Namespace) -> int:
    from sr_batch.pipeline import echo_stderr, run_job

    config = _job_config(args)
    if config.dry_run:
        from sr_batch.preview import dry_run

        dry_run(config, command="run")
        return EXIT_OK
    result = run_job(config)
    echo_stderr(result.summary_line())
    return EXIT_IMAGES_FAILED if result.counts.get("failed") else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from sr_batch import demo
    from sr_batch.errors import ConfigError

    if args.count < 1 or min(args.width, args.height) < 8:
        raise ConfigError("demo needs --count 1 or more and --width/--height of 8 px or more")
    result = demo.run_demo(args.output, count=args.count, size=(args.height, args.width),
                           model=args.model, scale=args.scale)
    print("\n".join(result.summary_lines()), flush=True)
    return EXIT_IMAGES_FAILED if result.failed else EXIT_OK


def cmd_nightly(args: argparse.Namespace) -> int:
    from sr_batch.nightly import run_nightly

    config = _job_config(args)
    if config.dry_run:
        from sr_batch.preview import dry_run

        dry_run(config.replace(address=None), command="nightly")
        return EXIT_OK
    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or "http://127.0.0.1:8265"
    result = run_nightly(config.replace(address=None), address, config_to_options(config),
                         stale_s=args.lock_stale_s)
    return result.exit_code


def cmd_manifest(args: argparse.Namespace) -> int:
    from sr_batch import manifest

    table = manifest.build_manifest(args.sources)
    manifest.write_manifest(table, args.output)
    total = sum(v or 0 for v in table.column("bytes").to_pylist())
    print(f"wrote {args.output}: {table.num_rows} images, {total / 1e6:.1f} MB", file=sys.stderr)
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from sr_batch.models import registry

    index = registry.read_index()
    defaults = {int(k): v for k, v in index.get("default", {}).items()}
    cards = {(e["name"], int(e["scale"])): e for e in index["models"]}
    specs = [*registry.list_models(), *(registry.bicubic_spec(s) for s in (2, 3, 4))]
    width = max(len("name"), *(len(spec.name) for spec in specs))
    print(f"{'name':<{width}} {'scale':>5} {'params':>8} {'FLOPs/px':>9} {'MP/s':>6} {'radius':>6} "
          f"{'Set5 PSNR/SSIM':>15} {'Set14 PSNR/SSIM':>15} {'channels':<8} {'trained':<24} default  file")
    for spec in specs:
        mark = "yes" if defaults.get(spec.scale) == spec.name else ""
        card = cards.get((spec.name, spec.scale), {})
        scores = [_card_score(card, ds) for ds in ("Set5", "Set14")]
        flops = f"{card['flops_per_pixel'] / 1000:.1f}k" if card.get("flops_per_pixel") else "-"
        speed = f"{card['mp_per_s']:.1f}" if card.get("mp_per_s") else "-"
        trained = (f"{'+'.join(d['dataset'] for d in card['trained_on'])} {card.get('steps_total', card['steps'])} st s{card['seed']}"
                   if card.get("trained_on") else "-")
        channels = card.get("net_channels", "RGB" if card else "-").split(" ")[0]
        print(f"{spec.name:<{width}} {'x' + str(spec.scale):>5} {spec.params:>8,} {flops:>9} {speed:>6} "
              f"{spec.receptive_radius:>6} {scores[0]:>15} {scores[1]:>15} {channels:<8} {trained:<24} "
              f"{mark:<7}  {spec.uri or '(no weights: Pillow bicubic)'}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from sr_batch.models import onnx_export

    result = onnx_export.export_model(args.model, args.output, scale=args.scale, opset=args.opset)
    print(result.check.line(), file=sys.stderr)
    print(result.summary_line(), file=sys.stderr)
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from sr_batch.models.convert import convert_model

    for line in convert_model(args.model, args.output).lines():
        print(line)
    return EXIT_OK


def _card_score(card: dict, dataset: str) -> str:
    """`37.53/0.9587` from a model card's eval of `dataset`, or `-`."""
    result = card.get("eval", {}).get(dataset)
    if not result:
        return "-"
    ssim = f"/{result['ssim_y']:.4f}" if "ssim_y" in result else ""
    return f"{result['psnr_y']:.2f}{ssim}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sr_batch.models import evaluation

    return evaluation.main(args.eval_args)


def cmd_train(args: argparse.Namespace) -> int:
    from sr_batch.models import training

    return training.main(args.train_args)


# Unix conventions: 128 + the signal's number.
EXIT_INTERRUPTED = 130  # SIGINT
EXIT_BROKEN_PIPE = 141  # SIGPIPE: what `yes | head -1` leaves in $PIPESTATUS


def cmd_provenance(args: argparse.Namespace) -> int:
    from sr_batch import provenance

    lines, matched = provenance.report(args.file, args.out)
    print("\n".join(lines))
    return EXIT_OK if matched else EXIT_IMAGES_FAILED


def cmd_report(args: argparse.Namespace) -> int:
    from sr_batch import reports
    from sr_batch.errors import ReportError

    try:
        if args.sql and (args.run or args.compare or args.compare_models):
            raise ReportError("--sql reads every run: filter with WHERE run_id = '...' instead of "
                              "--run/--compare")
        if args.allow_writes and not args.sql:
            raise ReportError("--allow-writes is for --sql only")
        db = reports.open_stats(args.output, user_sql=bool(args.sql), allow_writes=args.allow_writes)
        with reports.interrupt_on_sigint(db):
            if args.sql:
                reports.write_sql(db, args.sql, args.format, args.out)
            else:
                made = reports.build_report(
                    db, run=args.run, metric=args.metric, worst=args.worst,
                    compare_runs=tuple(args.compare) if args.compare else None,
                    compare_models=tuple(args.compare_models) if args.compare_models else None,
                    plots=args.format == "html", gallery=args.gallery)
                reports.write_report(made, args.format, args.out)
            sys.stdout.flush()  # a closed pipe shows up here, not in Python's flush at exit
    except ReportError as exc:
        # A bad question (SQL, run, metric) is bad usage: one line, exit 2.
        print(f"sr-batch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sr-batch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if args.out:
            raise  # not stdout's reader: a real error
        # The reader went away (`| head -1`): stop quietly, as Unix tools do. Python's
        # flush at exit would fail again on the closed pipe, so stdout goes to devnull.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sr-batch", description="Upscale image archives with neural super-resolution on Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  sr-batch run photos/ --output out/\n"
               "  sr-batch manifest s3://bucket/archive/ -o manifest.parquet\n"
               "  sr-batch run manifest.parquet --output s3://bucket/upscaled --gpus-per-actor 1\n"
               "  sr-batch run photos/ --output out/ --dry-run   # what would run, and why\n"
               "  sr-batch models")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="upscale images; write OUT/images, OUT/stats, OUT/runs",
                         epilog="example: sr-batch run photos/ --output out/ --scale 2 --format png")
    _add_run_options(run)
    run.set_defaults(func=cmd_run)

    demo_cmd = sub.add_parser(
        "demo", help="upscale demo pictures made here (text, edges, texture) and score them "
                     "against their originals; writes OUT/report.html (bundled model, local Ray)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="writes: OUT/demo-reference (originals), OUT/demo-input (their bicubic downscales, "
               "the inputs),\n        OUT/demo-manifest.parquet, OUT/upscaled (the run: images, "
               "stats, runs), OUT/report.html\n"
               "example: sr-batch demo demo-out")
    demo_cmd.add_argument("output", metavar="OUT", help="output root (local directory)")
    demo_cmd.add_argument("--count", type=int, default=12, help="pictures (default 12)")
    demo_cmd.add_argument("--width", type=int, default=320, help="input width in px (default 320)")
    demo_cmd.add_argument("--height", type=int, default=240, help="input height in px (default 240)")
    demo_cmd.add_argument("--model", default="auto", help="as for `run` (default: auto)")
    demo_cmd.add_argument("--scale", type=int, default=2, choices=(2, 3, 4))
    demo_cmd.set_defaults(func=cmd_demo)

    night = sub.add_parser(
        "nightly", help="submit the images new or changed since the last run as a Ray job",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  sr-batch nightly s3://b/archive/ --output s3://b/upscaled --address http://head:8265\n"
               "  crontab: 0 2 * * * sr-batch nightly /data/in --output /data/out  # see deploy/\n"
               "The cluster's token comes from RAY_AUTH_TOKEN or ~/.ray/auth_token.")
    _add_run_options(night)
    night.add_argument("--lock-stale-s", type=float, default=6 * 3600.0, metavar="S",
                       help="take over a lock not refreshed for this long (its holder died)")
    night.set_defaults(func=cmd_nightly)
    for action in night._actions:  # --address means the Jobs API here
        if action.dest == "address":
            action.help = "Ray Jobs API address, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS or local)"

    man = sub.add_parser("manifest", help="list images under sources into a manifest file",
                         epilog="example: sr-batch manifest photos/ 's3://b/x/**/*.jpg' -o m.parquet")
    man.add_argument("sources", nargs="+", metavar="SOURCE")
    man.add_argument("--output", "-o", required=True,
                     help="manifest file to write (.parquet, .csv or .jsonl)")
    man.set_defaults(func=cmd_manifest)

    models = sub.add_parser("models", help="list the model zoo", epilog="example: sr-batch models")
    models.set_defaults(func=cmd_models)

    export = sub.add_parser(
        "export", help="write a zoo model or a .keras file as ONNX, checked against Keras",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  sr-batch export residual --scale 2 --format onnx -o residual_x2.onnx\n"
               "  sr-batch export mine_x4.keras -o s3://bucket/models/mine_x4.onnx\n"
               "  sr-batch run photos/ --output out/ --model residual_x2.onnx")
    export.add_argument("model", metavar="MODEL", help="zoo name or path/URI to a .keras file")
    export.add_argument("--scale", type=int, default=None, choices=(2, 3, 4),
                        help="the zoo model's scale (default 2); for a file, checked when given")
    export.add_argument("--format", default="onnx", choices=("onnx",), help="export format")
    export.add_argument("--output", "-o", required=True, help="file to write (fsspec URI)")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: tf2onnx's)")
    export.set_defaults(func=cmd_export)

    convert = sub.add_parser(
        "convert", help="convert a PyTorch super-resolution file (.pth, .safetensors) to ONNX, "
                        "checked against PyTorch (needs the [torch] extra)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  sr-batch convert RealESRGAN_x4plus.pth -o realesrgan-x4plus.onnx\n"
               "  sr-batch convert 4x-model.safetensors -o s3://bucket/models/4x-model.onnx\n"
               "  sr-batch run photos/ --output out/ --model realesrgan-x4plus.onnx")
    convert.add_argument("model", metavar="MODEL", help="path/URI to a .pth, .pt, .ckpt or .safetensors file")
    convert.add_argument("--output", "-o", required=True, help="ONNX file to write (fsspec URI)")
    convert.set_defaults(func=cmd_convert)

    evaluate = sub.add_parser(
        "evaluate", help="Y-PSNR/SSIM, FLOPs and speed of every model vs bicubic (see jobs/evaluate.py --help)",
        epilog="example: sr-batch evaluate /data/Set5/HR /data/Set14/HR --scale 2 --self-ensemble")
    evaluate.add_argument("eval_args", nargs=argparse.REMAINDER)
    evaluate.set_defaults(func=cmd_evaluate)
    train = sub.add_parser("train", help="train a zoo architecture (see jobs/train.py --help)",
                           add_help=False)
    train.add_argument("train_args", nargs=argparse.REMAINDER)
    train.set_defaults(func=cmd_train)

    prov = sub.add_parser(
        "provenance", help="what a file says about its making (XMP), and its stats row under OUT",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the provenance an output's XMP holds (Digital Source Type, source and its "
                    "SHA-256, model and its SHA-256, settings, run, history) and the file's SHA-256; "
                    "with --out, the stats row under OUT whose output_sha256 matches it (exit 1 if none).",
        epilog="examples:\n"
               "  sr-batch provenance out/images/photo.png\n"
               "  sr-batch provenance found/photo.jpg --out s3://bucket/out")
    prov.add_argument("file", metavar="FILE", help="an image file (path or fsspec URI)")
    prov.add_argument("--out", default=None, metavar="OUT",
                      help="output root of runs: say which stats row (run, image) wrote this file")
    prov.set_defaults(func=cmd_provenance)

    rep = sub.add_parser(
        "report", help="query the stats: per-run summary, worst images, failures, comparisons, SQL",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  sr-batch report out/                                  # the latest run\n"
               "  sr-batch report out/ --format html -o report.html     # plots and crops\n"
               "  sr-batch report out/ --compare previous latest --metric psnr_y\n"
               "  sr-batch report out/ --compare-models residual subpixel\n"
               "  sr-batch report s3://b/out --sql \"SELECT error_type, count(*) FROM stats "
               "GROUP BY 1\"\n"
               "  sr-batch report out/ --allow-writes --sql \"COPY (FROM stats) TO 'stats.csv'\"")
    rep.add_argument("output", metavar="OUT", help="output root of runs (fsspec URI)")
    rep.add_argument("--run", default=None, metavar="RUN_ID|latest|previous|all",
                     help="which runs (default: latest; all with --compare-models)")
    rep.add_argument("--format", default="table", choices=("table", "json", "csv", "html"))
    rep.add_argument("--sql", default=None,
                     help="SQL over the views `stats` (every run, with run_id) and `runs`; it can "
                          "read nothing else, and INSTALL/LOAD of extensions is refused")
    rep.add_argument("--allow-writes", action="store_true",
                     help="with --sql: let the query open files (COPY ... TO, read_csv, ATTACH), "
                          "which it otherwise cannot")
    rep.add_argument("-o", "--out", default=None, metavar="FILE",
                     help="write to FILE (path or URI) instead of stdout")
    rep.add_argument("--metric", default=None,
                     help="metric that ranks and compares images (default: psnr_y where references "
                          "exist, else psnr_y_consistency; also psnr_y_gain, ssim_y_gain)")
    rep.add_argument("--worst", type=int, default=10, metavar="N",
                     help="worst images listed, and images listed as worse in a comparison")
    cmp_group = rep.add_mutually_exclusive_group()
    cmp_group.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                           help="compare run B with run A on the same image_ids (latest/previous ok)")
    cmp_group.add_argument("--compare-models", nargs=2, metavar=("MODEL_A", "MODEL_B"),
                           help="compare model B with model A on the same image_ids")
    rep.add_argument("--gallery", type=int, default=8, metavar="N",
                     help="HTML: worst and best N images with side-by-side crops (at most 24)")
    rep.set_defaults(func=cmd_report)
    return parser


def _split_forwarded(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """`sr-batch [-v] train|evaluate ARGS...`: ARGS go untouched to that job's own parser.

    (argparse's REMAINDER drops them when the first one starts with `-`.)
    """
    for i, word in enumerate(argv):
        if word in ("-v", "--verbose"):
            continue
        if word in _FORWARDING:
            return argv[:i + 1], argv[i + 1:]
        break
    return argv, None


# Commands whose options belong to a job's parser (jobs/train.py, jobs/evaluate.py).
_FORWARDING = {"train": "train_args", "evaluate": "eval_args"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    head, forwarded = _split_forwarded(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(head)
    if forwarded is not None:
        setattr(args, _FORWARDING[args.command], forwarded)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SrBatchError as exc:
        from sr_batch.errors import ConfigError, ManifestError

        print(f"sr-batch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (ConfigError, ManifestError)) else EXIT_RUN_FAILED
    except KeyboardInterrupt:
        print("sr-batch: interrupted; rerun the same command to finish", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line, details with --verbose
        if args.verbose:
            raise
        print(f"sr-batch: error: {type(exc).__name__}: {exc} (rerun with -v for details)",
              file=sys.stderr)
        return EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
