"""``medfm deidentify``."""

from __future__ import annotations

import argparse

from medfm.cli.options import add_run_options, add_salt_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``medfm deidentify`` and its options to ``sub``."""
    p = sub.add_parser(
        "deidentify",
        help="write de-identified DICOM, NIfTI and PNG copies (PS3.15 Basic Profile)",
        description="Copy every DICOM file under SOURCE to OUT/<patient>/<study>/<series>/"
        "<instance>.dcm with the DICOM PS3.15 Basic Application Level Confidentiality Profile "
        "applied (Retain Longitudinal Temporal Information with Modified Dates): every attribute "
        "of its Table E.1-1 removed, emptied or replaced (dicognito, then medfm for the rest), "
        "UIDs remapped consistently, dates shifted per patient, private tags removed, pixels "
        "unchanged. NIfTI (.nii, .nii.gz) and PNG files are copied to OUT/<patient>/<id><suffix> "
        "without their free-text header fields, header extensions and text chunks, voxels "
        "unchanged. Folder and file names are pseudonyms, never parts of a source path. Other, "
        "unreadable and BurnedInAnnotation=YES files are listed in OUT/quarantine.csv instead. "
        "Sources are only read.",
        epilog="Example: MEDFM_PSEUDONYM_SALT=site-secret medfm deidentify raw/ --out deid/",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="DICOM, NIfTI or PNG files, or folders"
    )
    p.add_argument("--out", required=True, help="folder for the copies and quarantine.csv")
    add_salt_option(p)
    p.add_argument(
        "--allow-burned-in",
        action="store_true",
        help="also copy files with BurnedInAnnotation=YES (their pixels are not cleaned)",
    )
    add_run_options(p, tracking=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``medfm deidentify`` with the parsed ``args``; returns the exit status."""
    from medfm.data.ingestion.deidentify import deidentify

    result = deidentify(
        args.sources,
        args.out,
        salt=args.salt,
        allow_burned_in=args.allow_burned_in,
        progress=not args.no_progress,
    )
    print(
        f"Wrote {len(result.written)} de-identified files to {args.out}; "
        f"{len(result.quarantined)} set aside (see {result.quarantine})"
    )
    return 0
