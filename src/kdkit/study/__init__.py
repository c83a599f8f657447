"""Studies over many whole runs: the seeds protocol (``kdkit seeds``)."""

from kdkit.study.seeds import SeedsResult, run_seeds, seeds_table

__all__ = ["SeedsResult", "run_seeds", "seeds_table"]
