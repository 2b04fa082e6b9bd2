"""What this owner has done in the current run, kept in Flower's per-run context state on its SuperNode.

Flower keeps ``context.state`` for each run between the ClientApp processes it
starts (secaggplus_mod keeps its protocol state there the same way), and starts
it empty for a new run. The ledger counts the global models this owner scored on
its held-out rows: each score is a query on those rows that the coordinator
chooses (one model per class gives their label histogram), so owner.yaml's
``privacy.max_evaluations_per_run`` caps them, and the message beyond the cap is
refused before a row is read.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context

from fedfhe_common import fl_contract as fc

LEDGER = "fedfhe-owner-ledger"
EVALUATIONS = "evaluations"


def count_evaluation(context: Context) -> int:
    """Record one more scored model in this run; InstructionRefused beyond the owner's cap. Returns the count."""
    cap = int(context.node_config.get(fc.NODE_MAX_EVALUATIONS, 0) or 0)
    record = context.state.config_records.get(LEDGER) or ConfigRecord({EVALUATIONS: 0})
    count = int(record.get(EVALUATIONS, 0)) + 1
    if cap and count > cap:
        raise fc.InstructionRefused(
            f"this owner scores at most {cap} global models per run on its held-out rows (owner.yaml "
            f"privacy.max_evaluations_per_run); the coordinator asked for number {count}")
    record[EVALUATIONS] = count
    context.state[LEDGER] = record
    return count
