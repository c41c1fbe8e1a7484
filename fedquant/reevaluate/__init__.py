"""``python -m fedquant.reevaluate``: a sweep's final models tested again with other server-side
evaluation options, without retraining (no Flower or Ray needed); the command line is
:mod:`fedquant.reevaluate.__main__`.

``jobs``  :func:`~fedquant.reevaluate.jobs.reevaluate_job` (one job) and
          :func:`~fedquant.reevaluate.jobs.calibration_draws` (sensitivity to the calibration images)
"""
