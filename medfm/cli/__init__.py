"""``medfm <command>``: argument parsing only; the work is done by the library functions."""
