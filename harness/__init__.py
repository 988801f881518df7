"""esgrpo harness: the contracts every method obeys (data, scoring, evaluation, budget, records, report)."""

__version__ = "0.1.0"
