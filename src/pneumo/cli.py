"""The ``pneumo`` command: train | evaluate | calibrate | refit-gate | predict | serve | token
| bench | dicom-listen | dicom-spool | dicomweb-sync.

Every error a user can cause ends in one line on stderr and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from . import __version__
from .config import BACKBONE_WEIGHTS_ENV, IMAGE_SIZE, MODEL_ENV, TrainConfig

log = logging.getLogger("pneumo")


def _add_site_arguments(parser: argparse.ArgumentParser) -> None:
    """DATA_DIR and --out BUNDLE, for the commands that make a new bundle from a folder."""
    parser.add_argument("data_dir", metavar="DATA_DIR", help="folder of labelled X-rays")
    parser.add_argument("--out", required=True, metavar="BUNDLE", help="new bundle folder")


def _add_data_dir_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help=f"{what} (default: $PNEUMO_DATA_DIR or ~/.local/share/pneumo)")


def _add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="BUNDLE", default=None,
                        help=f"model bundle folder (default: ${MODEL_ENV} or the shipped "
                             "models/pneumo-xception)")


def _add_dicom_tls_options(parser: argparse.ArgumentParser) -> None:
    """dicom-listen's certificates for DICOM over TLS (tls.TLSOptions)."""
    group = parser.add_argument_group(
        "DICOM over TLS",
        "PEM files, read at start (restart after renewing them); TLS 1.2 or later. Without "
        "--tls-cert the node listens in the clear, without --results-tls-ca it sends so. "
        "Only the CAs given are trusted, never the system's. See docs/integration.md.")
    group.add_argument("--tls-cert", metavar="PEM", default=None,
                       help="listen over TLS with this certificate (and its chain)")
    group.add_argument("--tls-key", metavar="PEM", default=None,
                       help="the private key of --tls-cert (unencrypted)")
    group.add_argument("--tls-ca", metavar="PEM", default=None,
                       help="require a client certificate signed by one of these CAs from "
                            "every peer")
    group.add_argument("--results-tls-ca", metavar="PEM", default=None,
                       help="send the results over TLS to a PACS whose certificate these "
                            "CAs signed, issued for the host name or IP address --results-to "
                            "gives")
    group.add_argument("--results-tls-cert", metavar="PEM", default=None,
                       help="the node's client certificate, for a PACS that asks for one")
    group.add_argument("--results-tls-key", metavar="PEM", default=None,
                       help="the private key of --results-tls-cert (unencrypted)")


def _add_tag_option(parser, scope: str) -> None:
    """dicom-spool's --tag: one instance, named as the node's log and status name it."""
    parser.add_argument("--tag", default=None, metavar="TAG",
                        help="only the instance with this tag, as the node's log and status "
                             "print it: '#12' or '#12 [3f9a0c2b1d]' (the hash, if given, is "
                             "checked)" + scope)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumo",
        description="Second-opinion pneumonia screening on chest X-rays (not a diagnosis).")
    parser.add_argument("--version", action="version", version=f"pneumo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    defaults = TrainConfig(data_dir="")
    train = commands.add_parser(
        "train", help="train a model bundle on one or more labelled folders",
        description="Train an Xception classifier on DATA_DIR... (each DATA/{NORMAL,PNEUMONIA} "
                    "or DATA/{train,val,test}/{NORMAL,PNEUMONIA}; test/ is never used; a "
                    "manifest.csv with file,patient_id gives patient ids). Each folder is a "
                    "source with its own patient-grouped validation part, and sources and "
                    "classes are balanced in the loss. Writes a run folder with config, "
                    "history, plots, metrics.json and bundle/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("data_dirs", nargs="+", metavar="DATA_DIR",
                       help="folders of labelled X-rays, one per source")
    train.add_argument("--calibrate-on", nargs="+", default=[], metavar="DIR",
                       help="labelled folders never trained on that, with every source's "
                            "validation part, choose the calibration and the threshold "
                            "(each set counting equally)")
    from .preprocessing import NORMALIZATIONS

    train.add_argument("--normalization", choices=NORMALIZATIONS, default=defaults.normalization,
                       help="intensity normalisation after the resize, kept in the bundle "
                            "for serving")
    train.add_argument("--balance", choices=["source", "class"], default=defaults.balance,
                       help="source: every (source, class) pair weighs the same in the loss; "
                            "class: every class")
    train.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    train.add_argument("--out", dest="out_dir", default=defaults.out_dir,
                       help="parent folder of run folders")
    train.add_argument("--run-name", default=None,
                       help="run folder name (default: a timestamp); reuse it to resume an "
                            "interrupted run")
    train.add_argument("--backbone-weights", default=None, metavar="PATH",
                       help=f"local ImageNet Xception .weights.h5 (or ${BACKBONE_WEIGHTS_ENV}); "
                            "without it Keras downloads the weights, which needs internet. "
                            "'random' starts from random weights (smoke tests only)")
    train.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="model input side")
    from .models import FIRST_FEATURE_BLOCK, N_BLOCKS

    train.add_argument("--feature-block", type=int, default=defaults.feature_block,
                       choices=range(FIRST_FEATURE_BLOCK, N_BLOCKS + 1), metavar="N",
                       help=f"the head reads the output of Xception block N "
                            f"({FIRST_FEATURE_BLOCK}-{N_BLOCKS}; 14 is the last, 5-12 the middle "
                            "flow, whose features generalise best); the network ends there")
    train.add_argument("--seed", type=int, default=defaults.seed, help="seed for split and training")
    train.add_argument("--validation-design", choices=["patient", "block"],
                       default=defaults.validation_design,
                       help="patient: random patients held out; block: whole acquisition "
                            "blocks held out, a harder estimate of a new site's performance")
    train.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                       help="share of patients used for validation")
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--head-epochs", type=int, default=defaults.head_epochs,
                       help="phase 1: epochs for the head on frozen features")
    train.add_argument("--fine-tune-blocks", type=int, default=defaults.fine_tune_blocks,
                       help="phase 2: how many top Xception blocks (of 14) to fine-tune; 0 skips")
    train.add_argument("--fine-tune-epochs", type=int, default=defaults.fine_tune_epochs,
                       help="phase 2: maximum epochs (early stopping on validation AUC)")
    train.add_argument("--fine-tune-learning-rate", type=float,
                       default=defaults.fine_tune_learning_rate)
    train.add_argument("--no-augment", dest="augment", action="store_false",
                       help="disable augmentation in phase 2")
    train.add_argument("--target-sensitivity", type=float, default=None, metavar="S",
                       help="choose the threshold reaching this validation sensitivity "
                            "(e.g. 0.95) instead of Youden's J")
    train.add_argument("--limit-per-class", type=int, default=None, metavar="N",
                       help="use at most N images per class (quick trials)")

    evaluate = commands.add_parser(
        "evaluate", help="measure a bundle on labelled folders, one report",
        description="Run every image of each DATA_DIR through the screening flow (input "
                    "checks, network, input gate) and write to --out: report.md (one table: "
                    "images, refused, warned, ROC AUC, accuracy, sensitivity, specificity with "
                    "95%% bootstrap intervals), metrics.json, roc_by_set.png, predictions.csv "
                    "and a folder of plots per set. A folder the model was trained on is "
                    "measured on its validation part only; a manifest.csv with view or age "
                    "adds rows per view and age group.")
    evaluate.add_argument("data_dirs", nargs="*", metavar="DATA_DIR",
                          help="folders of labelled X-rays")
    evaluate.add_argument("--validation", action="store_true",
                          help="also measure the validation part of every training source, "
                               "rebuilt from the model card")
    evaluate.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_model_option(evaluate)

    calibrate = commands.add_parser(
        "calibrate", help="fit the operating point to a site's labelled X-rays",
        description="Run the model on DATA_DIR (the same layouts as training) and write a new "
                    "bundle to --out whose threshold, probability calibration and inconclusive "
                    "band are fitted to these images; the network is copied untouched. The "
                    "card records the counts and date (no file names); site_report/ in the "
                    "new bundle holds metrics.json with 95%% bootstrap intervals, the images "
                    "needed for +/- 5 point intervals, warnings when the sample is too small, "
                    "and the plots.")
    _add_site_arguments(calibrate)
    calibrate.add_argument("--target-sensitivity", type=float, default=None, metavar="S",
                           help="choose the threshold reaching this sensitivity on the site's "
                                "images (e.g. 0.95) instead of Youden's J")
    _add_model_option(calibrate)

    refit = commands.add_parser(
        "refit-gate", help="fit a bundle's input gate to a folder of X-rays",
        description="Split DATA_DIR as pneumo train does (the card's seed, validation "
                    "fraction and design), describe the first part's backbone features by PCA "
                    "and set the warn and refuse cut-offs at percentiles of the second part's "
                    "scores. Writes a copy of the bundle to --out with the new gate.npz and "
                    "card entry; the network and calibration are untouched. From the model's "
                    "own training folder it gives back training's split.")
    refit.add_argument("data_dirs", nargs="+", metavar="DATA_DIR",
                       help="folders of labelled X-rays, one per source (the model's training "
                            "folders give back training's split)")
    refit.add_argument("--out", required=True, metavar="BUNDLE", help="new bundle folder")
    refit.add_argument("--components", type=int, default=None, metavar="K",
                       help="principal components kept (default: 128)")
    refit.add_argument("--reject-percentile", type=float, default=None, metavar="P",
                       help="refuse above this percentile of validation scores (default: 99.5)")
    refit.add_argument("--warn-percentile", type=float, default=None, metavar="P",
                       help="warn above this percentile of validation scores (default: 97)")
    _add_model_option(refit)

    predict = commands.add_parser(
        "predict", help="predict files and folders",
        description="One row per file: path, probability (calibrated P(pneumonia)), label, "
                    "inconclusive ('yes' when the probability lies in the model card's band "
                    "of clearly lower validation accuracy: read the label as not sure), "
                    "status: 'ok'; 'warning: <reasons>' (a doubtful input: probability and "
                    "label given, read them with care); 'rejected: <reasons>' (not a chest "
                    "X-ray the model can read: no label); or why the file could not be "
                    "read. Folders are searched recursively; a bad file never stops the "
                    "batch.")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    _add_model_option(predict)
    predict.add_argument("--output", "-o", default=None, metavar="FILE",
                         help="write here instead of standard output")
    predict.add_argument("--format", choices=["csv", "json"], default="csv")
    predict.add_argument("--batch-size", type=int, default=None,
                         help="images per forward pass (default: timed on the run's first "
                              "batches and the fastest kept)")

    export = commands.add_parser(
        "export-feedback", help="write reviewed studies as a labelled training folder",
        description="Write every study a reader reviewed as DIR/NORMAL/study-<id>.png or "
                    "DIR/PNEUMONIA/study-<id>.png: the image as the model saw it, labelled "
                    "with the model's label where the reader agreed and with the reader's "
                    "where they corrected it. pneumo train and pneumo calibrate accept the "
                    "folder.")
    export.add_argument("out_dir", metavar="DIR", help="output folder")
    export.add_argument("--data-dir", default=None, metavar="DIR",
                        help="the server's data folder (default: $PNEUMO_DATA_DIR or "
                             "~/.local/share/pneumo)")
    export.add_argument("--corrections-only", action="store_true",
                        help="only the studies whose label the reader corrected")

    commands.add_parser("token", help="print a new strong PNEUMO_API_TOKEN",
                        description="Print a new random token (32 bytes, URL-safe) for "
                                    "PNEUMO_API_TOKEN.")
    serve = commands.add_parser("serve", help="run the web app and JSON API",
                                description="Serve the web page and the JSON API with a "
                                            "production WSGI server.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (loopback by default)")
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument("--workers", type=int, default=4, help="request threads")
    serve.add_argument("--behind-proxy", action="store_true",
                       help="served through one reverse proxy that provides TLS: trust its "
                            "X-Forwarded-For/-Proto/-Host (one hop), mark the session cookie "
                            "Secure, and treat no request as the local user's")
    _add_model_option(serve)

    listen = commands.add_parser(
        "dicom-listen", help="a DICOM node: screen what the PACS sends, send results back",
        description="A DICOM Storage SCP (and C-ECHO) for CR and DX images. Each received "
                    "image is kept on disk before it is acknowledged, screened in the "
                    "background, and its results (a Comprehensive SR, and a Secondary "
                    "Capture with the heatmap unless --no-overlay) are sent by C-STORE to "
                    "--results-to, into the same study, tried again until delivered. Other "
                    "SOP classes are answered 0x0122 (SOP class not supported). Work "
                    "unfinished at a stop resumes at the next start (the spool lives in "
                    "$PNEUMO_DATA_DIR/dicom-node). SIGTERM or SIGINT stops it gracefully. "
                    "Exit status: 0 after such a stop; 1 when its screener or sender thread "
                    "died (restart it: its work waits in the spool); 2 for a wrong option, "
                    "or a model, data folder or port it cannot use. "
                    "See docs/integration.md.")
    listen.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: 127.0.0.1, loopback)")
    listen.add_argument("--port", type=int, default=11112, help="DICOM port (default: 11112)")
    listen.add_argument("--ae-title", default="PNEUMO",
                        help="this node's AE title (default: PNEUMO); associations called "
                             "to another are rejected")
    listen.add_argument("--results-to", required=True, metavar="AET@HOST:PORT",
                        help="the PACS that receives the results, e.g. ORTHANC@127.0.0.1:4242")
    listen.add_argument("--calling-aets", nargs="+", default=None, metavar="AET",
                        help="accept associations only from these calling AE titles "
                             "(default: any)")
    listen.add_argument("--max-associations", type=int, default=10, metavar="N",
                        help="serve at most N associations at once; one more is rejected as "
                             "transient (local limit exceeded) and logged (default: 10)")
    listen.add_argument("--no-overlay", dest="overlay", action="store_false",
                        help="send the SR only, without the Secondary Capture with the "
                             "heatmap")
    listen.add_argument("--overdue-after", default="1h", metavar="SPAN",
                        help="log at ERROR, once, images still not screened (the screener "
                             "stuck or far behind) and results still undelivered this long "
                             "after the image arrived, or for screening after the node "
                             "started if that was later (30m, 1h, 1d; default: 1h); the "
                             "node keeps working on them")
    _add_data_dir_option(listen, "where the spool is kept, in dicom-node/")
    _add_model_option(listen)
    _add_dicom_tls_options(listen)

    spool = commands.add_parser(
        "dicom-spool", help="what waits in the DICOM node's spool: status | retry | purge",
        description="See and act on the spool of pneumo dicom-listen ($PNEUMO_DATA_DIR/"
                    "dicom-node), beside a running node or without one. Instances and "
                    "results are named by the tags the node's log uses (#row [hash]), never "
                    "by an identifier; retry and purge act on every row they apply to, or "
                    "with --tag on one instance. Exit status: 0 done (status: nothing needs "
                    "attention); 1 status found failed instances, instances overdue to be "
                    "screened or overdue results, or purge listed what it would delete "
                    "without --yes; 2 an error, nothing changed (no spool, another user's "
                    "spool, a busy or unreadable database, a --tag that names no instance). "
                    "Run it as the node's user. See docs/integration.md, 'Operating the "
                    "spool'.")
    actions = spool.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status", help="counts, the oldest wait, failed instances and waiting results",
        description="Print instances by state (and how many wait overdue to be screened), "
                    "results waiting for delivery (and how many are overdue), how long the "
                    "oldest waiting image has waited, then each failed instance with its "
                    "error, each instance overdue to be screened, and each waiting result "
                    "with its attempts, next try and last error. Exit status 1 when an "
                    "instance failed, an instance is overdue to be screened (the screener "
                    "is stuck or far behind) or a result is overdue, so that a monitoring "
                    "check can run it.")
    status.add_argument("--overdue-after", default="1h", metavar="SPAN",
                        help="an instance not yet screened, or a result undelivered, this "
                             "long after its image arrived is overdue (default: 1h, as the "
                             "node's)")
    status.add_argument("--limit", type=int, default=20, metavar="N",
                        help="list at most N of each: failed instances, instances overdue "
                             "to be screened, waiting results (default: 20; the counts are "
                             "always whole)")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_data_dir_option(status, "the node's data folder (its spool is dicom-node/ in it)")
    retry = actions.add_parser(
        "retry", help="failed instances screened again, undelivered results sent now",
        description="Put failed instances back in the queue to screen and make every "
                    "undelivered result due now, instead of after the back-off (up to 5 "
                    "minutes): after fixing what made the PACS refuse, or the bug that "
                    "made screening fail; with --tag, only those of one instance. A running "
                    "node takes them up within 30 s, a stopped one at its next start. Exit "
                    "status 2 when --tag names no instance in the spool.")
    _add_tag_option(retry, "; default: every failed instance and undelivered result")
    _add_data_dir_option(retry, "the node's data folder (its spool is dicom-node/ in it)")
    purge = actions.add_parser(
        "purge", help="delete failed instances (patient data), and old undelivered results",
        description="Delete the failed instances: their rows and their files, which hold "
                    "patient data. With --results-older-than, also the instances whose "
                    "results are still undelivered that long after their image arrived "
                    "(the node gives up on them). With --tag, only the one instance named: "
                    "failed, with undelivered results (whatever their age), or still to be "
                    "screened while no node runs on the spool. Without --yes it only lists "
                    "them and exits 1. An image the PACS sends again afterwards is screened "
                    "afresh. Exit status 2 when --tag names no instance in the spool, or one "
                    "still to be screened while a node runs.")
    which = purge.add_mutually_exclusive_group()  # --tag purges one, whatever its age
    which.add_argument("--results-older-than", default=None, metavar="SPAN",
                       help="also give up on results undelivered this long after their image "
                            "arrived (e.g. 7d)")
    _add_tag_option(which, ", whatever its age")
    purge.add_argument("--yes", action="store_true", help="delete, not only list")
    _add_data_dir_option(purge, "the node's data folder (its spool is dicom-node/ in it)")

    sync = commands.add_parser(
        "dicomweb-sync", help="screen a DICOMweb archive's new CR/DX images, store the results",
        description="Find the CR and DX instances on a DICOMweb server (QIDO-RS), fetch each "
                    "one not handled before (WADO-RS), screen it and store the results into "
                    "its study (STOW-RS): a DICOM SR, and the overlay as a Secondary "
                    "Capture. A ledger in the data folder keeps anything from being screened "
                    "or stored twice; failed instances are tried again on the next run. "
                    "Credentials come from the environment: PNEUMO_DICOMWEB_TOKEN (a bearer "
                    "token), or PNEUMO_DICOMWEB_USER and PNEUMO_DICOMWEB_PASSWORD (HTTP basic, "
                    "as Orthanc's users). Exit status 1: some instances failed (tried again "
                    "next run). See docs/integration.md.")
    sync.add_argument("--url", required=True,
                      help="the DICOMweb service root, e.g. http://pacs:8042/dicom-web")
    sync.add_argument("--since", default=None, metavar="TIME",
                      help="only studies from TIME on: a date or date and time "
                           "(2026-12-01, 2026-12-01T08:00) or a span back from now (30m, 12h, "
                           "2d, 1w); default: every study")
    sync.add_argument("--no-overlay", dest="overlay", action="store_false",
                      help="store the SR only, no Secondary Capture")
    _add_data_dir_option(sync, "where the ledger is kept")
    _add_model_option(sync)

    from .bench import add_arguments as add_bench_arguments

    bench = commands.add_parser(
        "bench", help="measure inference speed on this machine",
        description="Measure, in one run on generated X-ray-like images: the bare forward "
                    "pass, the naive model.predict + Grad-CAM pattern, API requests with "
                    "heatmaps against a real `pneumo serve`, `pneumo predict` on a folder, "
                    "8 concurrent clients, start-up time and resident memory. Prints a "
                    "table; --report writes it as Markdown. Wall-clock figures: run it on "
                    "an otherwise idle machine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_model_option(bench)
    add_bench_arguments(bench)
    return parser


def _train(args) -> int:
    from .train import run_training

    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    config = TrainConfig(data_dir=args.data_dirs[0], extra_sources=args.data_dirs[1:], **fields)
    command = "pneumo " + " ".join(shlex.quote(a) for a in args.argv)
    run_dir = run_training(config, command=command)
    print(f"run folder: {run_dir}\nbundle: {run_dir / 'bundle'}")
    return 0


def _evaluate(args) -> int:
    from .evaluate import evaluate, summary

    if not args.data_dirs and not args.validation:
        raise ValueError("give at least one labelled folder, or --validation")
    report = evaluate(args.data_dirs, args.out, args.model, with_validation=args.validation)
    print(summary(report))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _calibrate(args) -> int:
    from .site_calibration import calibrate_site, summary

    metrics = calibrate_site(args.data_dir, args.out, args.model,
                             target_sensitivity=args.target_sensitivity)
    print(summary(metrics))
    print(f"calibrated bundle: {args.out}")
    return 0


def _refit_gate(args) -> int:
    from . import gate
    from .refit_gate import refit_gate, summary

    entry = refit_gate(
        args.data_dirs, args.out, args.model,
        n_components=args.components or gate.N_COMPONENTS,
        reject_percentile=args.reject_percentile or gate.REJECT_PERCENTILE,
        warn_percentile=args.warn_percentile or gate.WARN_PERCENTILE)
    print(summary(entry))
    print(f"bundle with the refitted gate: {args.out}")
    return 0


def _predict(args) -> int:
    from .predict_files import RunStats, expand_paths, predict_paths, write_rows
    from .predictor import Predictor

    paths = list(expand_paths(args.paths))
    if not paths:
        raise FileNotFoundError("no image files found in the given paths")
    predictor = Predictor.from_bundle(args.model)
    stats = RunStats()
    rows = predict_paths(predictor, paths, batch_size=args.batch_size,
                         progress=sys.stderr.isatty() or bool(args.output), stats=stats)
    count = write_rows(rows, args.output, args.format)
    if args.output:
        print(f"{count} rows written to {args.output} ({stats.summary()})", file=sys.stderr)
    return 0


def _export_feedback(args) -> int:
    from .studies import DATABASE_FILE, StudyStore, default_data_dir, export_feedback

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if not (data_dir / DATABASE_FILE).is_file():
        raise FileNotFoundError(f"no study database in {data_dir} ({DATABASE_FILE})")
    counts = export_feedback(StudyStore(data_dir), args.out_dir,
                             corrections_only=args.corrections_only)
    print(f"{counts['NORMAL']} NORMAL and {counts['PNEUMONIA']} PNEUMONIA images written to "
          f"{args.out_dir}")
    return 0


def _serve(args) -> int:
    try:
        from .web.server import serve
    except ImportError:
        raise RuntimeError("the web app is not installed in this build") from None
    return serve(host=args.host, port=args.port, workers=args.workers, model=args.model,
                 behind_proxy=args.behind_proxy)


def _token(args) -> int:
    from .web.auth import make_token

    print(make_token())
    return 0


def _dicom_listen(args) -> int:
    from .spans import parse_span
    from .dicom_node.node import run
    from .dicom_node.tls import TLSOptions

    tls = TLSOptions(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca,
                     results_ca=args.results_tls_ca, results_cert=args.results_tls_cert,
                     results_key=args.results_tls_key)
    return run(host=args.host, port=args.port, ae_title=args.ae_title,
               results_to=args.results_to, model=args.model, calling_aets=args.calling_aets,
               overlay=args.overlay, data_dir=args.data_dir,
               overdue_after=parse_span(args.overdue_after, "--overdue-after"),
               max_associations=args.max_associations, tls=tls)


def _dicom_spool(args) -> int:
    import json

    from .dicom_node.admin import Tag, open_spool
    from .spans import parse_span

    if args.action == "status":
        overdue_after = parse_span(args.overdue_after, "--overdue-after")
        if args.limit < 0:
            raise ValueError(f"--limit {args.limit}: expected 0 or more")
    older_than = None
    if args.action == "purge" and args.results_older_than is not None:
        older_than = parse_span(args.results_older_than, "--results-older-than")
    # 'is not None': an empty --tag "$TAG" is a mistake, never "every instance"
    tag = Tag.parse(args.tag) if getattr(args, "tag", None) is not None else None
    with open_spool(args.data_dir) as spool:
        if args.action == "status":
            status = spool.status(overdue_after)
            print(json.dumps(status.as_dict(), indent=2) if args.json
                  else status.text(args.limit))
            return 1 if status.needs_attention else 0
        if args.action == "retry":
            print(spool.retry(tag).text())
            return 0
        # --tag and --results-older-than: argparse lets one through at most
        purged = spool.purge_one(tag, confirmed=args.yes) if tag is not None \
            else spool.purge(older_than, confirmed=args.yes)
        print(purged.text())
        return 1 if purged and not purged.done else 0


def _dicomweb_sync(args) -> int:
    from .bundle import ModelCard, read_card
    from .config import default_bundle_path
    from .dicomweb_sync import parse_since, sync
    from .predictor import Predictor

    since = parse_since(args.since) if args.since else None
    # the card says which model the ledger's entries are for; the model itself loads
    # only when a run finds something it has not screened (most runs from cron do not)
    bundle = Path(args.model) if args.model else default_bundle_path()
    card = ModelCard.from_dict(read_card(bundle))
    stats = sync(args.url, lambda: Predictor.from_bundle(bundle),
                 model=f"{card.name} {card.version}", since=since,
                 data_dir=Path(args.data_dir) if args.data_dir else None,
                 overlay=args.overlay, progress=sys.stderr.isatty())
    print(stats.summary())
    return 1 if stats.failed else 0


def _bench(args) -> int:
    from .bench import run_from_args

    return run_from_args(args)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from .bundle import BundleError
    from .data import DataError
    from .imaging import ImageError
    from .models import BackboneWeightsError

    handlers = {"train": _train, "evaluate": _evaluate, "calibrate": _calibrate,
                "refit-gate": _refit_gate, "predict": _predict, "export-feedback": _export_feedback, "serve": _serve,
                "dicomweb-sync": _dicomweb_sync,
                "token": _token, "bench": _bench, "dicom-listen": _dicom_listen,
                "dicom-spool": _dicom_spool}
    try:
        return handlers[args.command](args)
    except (DataError, BundleError, BackboneWeightsError, ImageError, FileNotFoundError,
            RuntimeError, ValueError) as exc:
        if args.verbose:
            raise
        print(f"pneumo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pneumo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
