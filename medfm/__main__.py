"""``python -m medfm`` (also what ``torchrun -m medfm`` runs)."""

from medfm.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
