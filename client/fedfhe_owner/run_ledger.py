"""What this owner has done in the current run, kept in Flower's per-run context state on its SuperNode.

Flower keeps ``context.state`` for each run between the ClientApp processes it
starts (secaggplus_mod keeps its protocol state there the same way), and starts
it empty for a new run. The ledger counts the global models this owner scored on
its held-out rows: each score is a query on those rows that the coordinator
chooses (one model per class gives their label histogram), so owner.yaml's
``privacy.max_evaluations_per_run`` caps them, and the message beyond the cap is
refused before a row is read. It also keeps a digest of every global model this
owner trained on (or computed newton's terms at), and refuses the same model a
second time (``refuse_replayed_model``).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context

from fedfhe_common import fl_contract as fc

LEDGER = "fedfhe-owner-ledger"
EVALUATIONS = "evaluations"
TRAINED_MODELS = "trained-models"  # fl_contract.model_digest of each model trained on in this run, in order


def _ledger(context: Context) -> ConfigRecord:
    return context.state.config_records.get(LEDGER) or ConfigRecord({EVALUATIONS: 0})


def count_evaluation(context: Context) -> int:
    """Record one more scored model in this run; InstructionRefused beyond the owner's cap. Returns the count."""
    cap = int(context.node_config.get(fc.NODE_MAX_EVALUATIONS, 0) or 0)
    record = _ledger(context)
    count = int(record.get(EVALUATIONS, 0)) + 1
    if cap and count > cap:
        raise fc.InstructionRefused(
            f"this owner scores at most {cap} global models per run on its held-out rows (owner.yaml "
            f"privacy.max_evaluations_per_run); the coordinator asked for number {count}")
    record[EVALUATIONS] = count
    context.state[LEDGER] = record
    return count


def refuse_replayed_model(context: Context, params: list[np.ndarray], config: ConfigRecord) -> str:
    """Record the global model this owner is about to train on (or compute newton's terms at); InstructionRefused
    if it already did in this run. Returns the model's digest (fl_contract.model_digest).

    Why: a coordinator that sends one model twice, to participant sets that differ by one owner (S, then S
    without the victim), gets the victim's update as the difference of the two aggregates, even under SecAgg+
    (which hides each update, not the sums). Every honest owner in both sets sees the same model twice and
    refuses the second, so the second aggregate never forms. An honest coordinator never sends a model twice in
    a run (server_app.Recording.note_model ends the training instead).

    Limitation, plainly: this catches exact replays only. A near replay, the model perturbed by an epsilon in
    one coefficient (one ulp is enough), is a different model here, and the difference of its aggregate and
    the first one is the victim's update up to an error of the order of epsilon. Nor does it help where an
    owner's update does not depend on the model at all (LinearRegression, Ridge and LinearSVC refit from
    scratch under FedAvg): there any two rounds whose sets differ by one owner give that owner's update. What
    bounds those instead is only how often the coordinator can ask: ``privacy.max_evaluations_per_run`` caps
    the models this owner trains on per run (each is also scored), and ``privacy.min_owners_per_round`` the
    smallest SecAgg+ round. Central DP does not: the coordinator adds that noise itself.
    """
    digest = fc.model_digest(params)
    record = _ledger(context)
    seen = [str(d) for d in record.get(TRAINED_MODELS, [])]
    if digest in seen:
        where = f"round {config[fc.SERVER_ROUND]}" if fc.SERVER_ROUND in config else "this message"
        raise fc.InstructionRefused(
            f"{where}: this owner already trained on this exact global model in this run (model number "
            f"{seen.index(digest) + 1} of {len(seen)}); a model sent twice to owner sets that differ by one owner "
            "gives away that owner's update, so it is refused")
    record[TRAINED_MODELS] = [*seen, digest]
    context.state[LEDGER] = record
    return digest
