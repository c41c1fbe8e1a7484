"""HeteroFL on the server: the replies' sub-models expanded to the global shapes before Flower
averages them, so that each entry's average is over the clients holding it."""

from __future__ import annotations

from flwr.app import ArrayRecord, Message

from fedquant.federation import protocol as P
from fedquant.models.width import overlap_fill


def fill_sub_models(replies: list[Message], global_arrays: ArrayRecord, arrays_key: str) -> None:
    """Expand every reply's sub-model arrays to the shapes of ``global_arrays`` (the model sent
    this round), filling the entries it does not hold with their mean over the clients that do
    (example-weighted), so that Flower's weighted average yields each entry's average over its
    holders (the global value where nobody holds it; :func:`fedquant.models.width.overlap_fill`
    proves the identity). For FedAvgM/FedAdam the untouched entries' pseudo-gradient is then 0,
    but their momentum from earlier rounds still moves them."""
    global_state = global_arrays.to_torch_state_dict()
    states = [(m.content.array_records[arrays_key].to_torch_state_dict(),
               float(m.content.metric_records[P.METRICS][P.NUM_EXAMPLES])) for m in replies]
    for reply, filled in zip(replies, overlap_fill(global_state, states), strict=True):
        reply.content[arrays_key] = ArrayRecord(filled)
