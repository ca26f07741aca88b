"""``medfm deidentify``."""

from __future__ import annotations

import argparse

from medfm.cli.options import add_run_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``medfm deidentify`` and its options to ``sub``."""
    p = sub.add_parser(
        "deidentify",
        help="write de-identified DICOM copies (PS3.15 Basic Profile, through dicognito)",
        description="Copy every DICOM file under SOURCE to OUT/<patient>/<study>/<series>/"
        "<instance>.dcm with the DICOM PS3.15 Basic Application Level Confidentiality Profile "
        "applied (Retain Longitudinal Temporal Information with Modified Dates): UIDs remapped "
        "consistently, dates shifted per patient, names and IDs replaced, private tags removed, "
        "pixels unchanged. Folder and file names are pseudonyms, never parts of a source path. "
        "Non-DICOM, unreadable and BurnedInAnnotation=YES files are listed in OUT/quarantine.csv "
        "instead. Sources are only read.",
        epilog="Example: MEDFM_PSEUDONYM_SALT=site-secret medfm deidentify raw/ --out deid/",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="DICOM files or folders")
    p.add_argument("--out", required=True, help="folder for the copies and quarantine.csv")
    p.add_argument(
        "--salt",
        help="pseudonym salt (else $MEDFM_PSEUDONYM_SALT, else OUT/pseudonym_salt.key); the same "
        "salt gives the same UIDs, date shifts and file names in every run",
    )
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
