"""What this owner has done in the current run, kept in Flower's per-run context state on its SuperNode.

Flower keeps ``context.state`` for each run between the ClientApp processes it
starts (secaggplus_mod keeps its protocol state there the same way), and starts
it empty for a new run. The ledger counts the global models this owner scored on
its held-out rows: each score is a query on those rows that the coordinator
chooses (one model per class gives their label histogram), so owner.yaml's
``privacy.max_evaluations_per_run`` caps them, and the message beyond the cap is
refused before a row is read. It also keeps a digest of every global model this
owner trained on (or computed newton's terms at), and refuses the same model a
second time (``refuse_replayed_model``), and the owners of this run's first SecAgg+ sum, so that every later
sum must be over the same owners (``check_fixed_membership``).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context

from fedfhe_common.contracts import fl_contract as fc

LEDGER = "fedfhe-owner-ledger"
EVALUATIONS = "evaluations"
TRAINED_MODELS = "trained-models"  # fl_contract.model_digest of each model trained on in this run, in order
MEMBERS = "secure-members"  # SuperNode ids of the owners in this run's first SecAgg+ sum this owner unmasked


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
    a run (rounds.Recording.note_model ends the training instead).

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


def check_fixed_membership(context: Context, active: list[int], min_owners: int) -> None:
    """At SecAgg+'s unmask stage: the sum must be over at least ``min_owners`` owners, and over exactly the owners
    of this run's first sum this owner helped unmask (recorded here); InstructionRefused otherwise, before any
    share leaves.

    The rule, and why it suffices against isolation within a run: if every honest owner enforces it, any two
    sums the coordinator can unmask that share an honest owner are over the same owners. So the honest owners
    fall into disjoint groups, each summed only as a whole, and no combination of sums (differences of rounds
    whose owners differ by one, or three rounds A - B - C with B and C inside A) separates one honest owner
    from its group, whatever models were sent. It needs the complete SecAgg+ graph (every owner holds a share
    of every other's secrets: ``check_secagg_setup`` refuses less), so that the active list an owner is given
    is the whole sum's, not only its neighbours'. Weaker rules leave a gap: "no round may drop exactly one
    owner" allows A - B - C = {v} with B and C disjoint halves of A without v, which no single owner sees.

    The price: an owner lost mid-run ends the training (that round's sum is refused by every owner, and the
    coordinator ends the run with the model it has: secure_training.CheckedSecAgg); an owner lost in the
    first round only shrinks the group. Sampling fewer than every owner per round is refused the same way.
    What it does not cover: two runs. A second run over the owners minus one, started from the same initial
    model, gives that owner's first update by difference; the consortium's operators (who register the
    SuperNodes and approve the app) start runs, not the coordinator alone, and docs/security.md says so.
    """
    members = sorted(int(n) for n in active)
    if len(members) < min_owners:
        raise fc.InstructionRefused(
            f"SecAgg+ unmask: the sum would be over {len(members)} owner(s); {fc.REFUSED_FEW_OWNERS} "
            f"{min_owners} owners (owner.yaml privacy.min_owners_per_round)")
    record = _ledger(context)
    first = sorted(int(n) for n in record.get(MEMBERS, []))
    if not first:
        record[MEMBERS] = members
        context.state[LEDGER] = record
        return
    if members != first:
        gone, new = sorted(set(first) - set(members)), sorted(set(members) - set(first))
        change = "; ".join(part for part in (
            f"without {len(gone)} owner(s) of the first ({', '.join(map(str, gone[:5]))})" if gone else "",
            f"with {len(new)} owner(s) not in it ({', '.join(map(str, new[:5]))})" if new else "") if part)
        raise fc.InstructionRefused(
            f"SecAgg+ unmask: this sum {fc.REFUSED_OTHER_OWNERS} ({change}); sums over "
            "sets that differ would let the coordinator separate one owner's update, so every sum of a run must be "
            "over the same owners")
