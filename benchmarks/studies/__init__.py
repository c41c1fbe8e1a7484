"""Study drivers and their analysis: they order and resume the runs of a study and turn its
results into the tables of docs/results.md (the arms themselves are conf/experiment configs)."""
