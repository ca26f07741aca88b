"""``medfm synthetic`` and ``medfm ingest``."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

from medfm.cli.options import add_run_options, add_salt_option


def _add_synthetic(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synthetic",
        help="write the embedded multi-center dataset as real files",
        description="Write grey-scale 2D images of four biological classes from several virtual "
        "centers as DICOM (with synthetic PHI in the headers), NIfTI and PNG, plus "
        "labels.csv. The same seed gives identical files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="folder to write raw/ and labels.csv into")
    p.add_argument("--centers", type=int, default=3, help="number of centers (1-4)")
    p.add_argument("--cases-per-center", type=int, default=50, help="patients per center")
    p.add_argument("--images-per-case", type=int, default=3, help="images per patient")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument(
        "--center-strength",
        type=float,
        default=0.5,
        help="center signature, 0 (none) to 1 (strong)",
    )
    p.add_argument("--color", action="store_true", help="H&E-like RGB tiles (PNG) instead of grey")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(run=_run_synthetic)


def _run_synthetic(args: argparse.Namespace) -> int:
    from medfm.data.synthetic import SyntheticSpec, write_dataset

    spec = SyntheticSpec(
        args.centers,
        args.cases_per_center,
        args.images_per_case,
        args.size,
        args.center_strength,
        args.seed,
        args.color,
    )
    print(f"Wrote {write_dataset(args.out, spec)}")
    return 0


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="scan DICOM/NIfTI/PNG/MedMNIST/slides into a de-identified manifest",
        description="Scan SOURCE folders recursively (DICOM series, NIfTI, PNG/JPEG/TIFF, "
        "MedMNIST .npz, whole-slide images tiled into OUT/tiles); write OUT/manifest.csv "
        "(one row per image, DICOM series or slide tile; identifiers replaced by HMAC "
        "pseudonyms; patient-level splits), "
        "OUT/quarantine.csv (each rejected file with its reason) and OUT/report.json "
        "(counts). Source files are never modified.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="folders or files to ingest")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--labels", help="CSV with one row per image (or patient) and a label column")
    p.add_argument(
        "--label-key",
        default="path",
        help="labels column to join on: path (resolved relative to the CSV's folder), "
        "patient, series, study or id (pseudonyms from an earlier ingest)",
    )
    p.add_argument("--label-column", default="label", help="labels column holding the class")
    p.add_argument(
        "--label-columns",
        default="",
        metavar="COL[,COL...]",
        help="numeric labels columns to copy into the manifest under their own names, e.g. "
        "age,gm_volume (descriptors for ssl.objective=anatcl); none by default, and "
        "report.json names the numeric columns left out. A column is refused (the ingest "
        "stops, naming it and why) if its name looks like a PHI attribute (a DICOM Basic "
        "Profile keyword, or containing patient, subject, name, date, birth, dob, yob, id, "
        "mrn, accession, phone, email, address, ssn), if it is not numeric, or if its values "
        "look like identifiers (distinct integers of 6+ digits) or dates (YYYYMMDD). An age "
        "column (age, baseline_age, ...) is capped at 90 (HIPAA Safe Harbor)",
    )
    p.add_argument(
        "--center",
        default="column:center",
        help="where the center comes from: column:NAME (labels file), folder:LEVEL "
        "(0 = first folder under SOURCE) or dicom:TAG (identifiers such as InstitutionName "
        "are pseudonymised)",
    )
    add_salt_option(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    p.add_argument(
        "--test-center",
        action="append",
        default=[],
        metavar="CENTER",
        help="put every image of this center in the test split (repeatable); the "
        "other centers are split by patient into train and val",
    )
    p.add_argument("--tile-size", type=int, default=224, help="whole-slide tile side in pixels")
    p.add_argument(
        "--magnification",
        type=float,
        help="whole-slide tiling magnification, e.g. 20 (default: the scan's own)",
    )
    p.add_argument(
        "--tissue-threshold",
        type=float,
        default=0.5,
        help="minimum tissue fraction of a kept whole-slide tile",
    )
    p.add_argument("--max-tiles", type=int, help="at most this many tiles per slide, evenly spaced")
    add_run_options(p, tracking=False)
    p.set_defaults(run=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from medfm.data.ingestion.ingest import ingest
    from medfm.data.ingestion.rows import TileOptions

    result = ingest(
        args.sources,
        args.out,
        labels=args.labels,
        label_key=args.label_key,
        label_column=args.label_column,
        label_columns=args.label_columns,
        center=args.center,
        salt=args.salt,
        seed=args.seed,
        test_centers=args.test_center,
        tiles=TileOptions(
            args.tile_size, args.magnification, args.tissue_threshold, args.max_tiles
        ),
        progress=not args.no_progress,
    )
    print(json.dumps(result.counts, indent=2))
    print(f"Manifest: {result.manifest}\nQuarantine: {result.quarantine}")
    return 0


synthetic = SimpleNamespace(add_parser=_add_synthetic)
ingest = SimpleNamespace(add_parser=_add_ingest)
