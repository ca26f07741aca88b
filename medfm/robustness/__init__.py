"""The robustness audit (``medfm robustness``): the index, the analyses, the audit run, the card."""
