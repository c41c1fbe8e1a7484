"""``python -m fedquant.report``: comparison tables and plots over finished runs (no Flower or
Ray needed); the command line is :mod:`fedquant.report.__main__`.

``runs``     job folders, their results.json, grouped into methods
``stats``    a run's last-k figure, mean +- std, paired t-intervals (also used by benchmarks)
``summary``  per-method tables, paired differences against a baseline, per-round curves
``tables``   report.md and report.csv as text
``plots``    report.png and report_rounds.png
``make``     one report: :func:`~fedquant.report.make.make_report` writes all four files
"""
