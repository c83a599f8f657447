"""The run report: one self-contained HTML page a person reads at a glance, plus a Markdown summary.

:mod:`kdkit.report.page` assembles it (``write_report``), :mod:`kdkit.report.plots` draws and classifies runs,
:mod:`kdkit.report.html` renders; ``kdkit report RUN...`` is the command (:mod:`kdkit.report.commands`).
"""

from kdkit.report.page import Entry, load_case_study, measure_run, write_report
from kdkit.report.runs import RunInfo, infer_roles, load_run, pareto_front

__all__ = ["write_report", "load_run", "infer_roles", "pareto_front", "RunInfo", "Entry", "measure_run",
           "load_case_study"]
