"""``cpgformer calibrate STORE CHECKPOINT -o NEW``: temperature scaling on masked validation calls."""

from __future__ import annotations

import argparse
import json
import sys

from cpgformer.impute.calibration import CalibrateOptions, calibrate
from cpgformer.options import add_options, from_args

NAME = "calibrate"
HELP = "fit a calibration temperature on masked validation calls; write a calibrated checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="the dataset store the model was trained on")
    parser.add_argument("checkpoint", help="checkpoint written by cpgformer train")
    parser.add_argument("-o", "--output", required=True, help="calibrated checkpoint to write")
    add_options(parser, CalibrateOptions)


def run(args: argparse.Namespace) -> int:
    options = from_args(CalibrateOptions, args)
    report = calibrate(args.store, args.checkpoint, args.output, **vars(options))
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    return 0
