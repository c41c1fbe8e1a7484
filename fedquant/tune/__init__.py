"""``python -m fedquant.tune``: an Optuna study over fedquant runs (the optional ``tune`` extra).

Each trial is one ``python -m fedquant`` subprocess over the same Hydra composition as the
command line, so a trial's crash is that trial's failure and Ray starts afresh per trial. The
objective is a final *validation* accuracy (results.json ``final_validation``), never a test one.

``space``   the search space syntax (``key=log:a:b`` ...) -> Optuna distributions
``checks``  the base overrides and the space checked by composing them, before any trial runs
``watch``   a running trial's validation accuracy per evaluated round (its checkpoints, results.json)
``trial``   one trial's subprocess: start, poll, stop (kill its process group), its result
``study``   the study: storage, sampler, pruner, objective, progress lines, the summary
"""
