"""The `fedfhe-owner supernode` process: flower-supernode, launched and repaired."""
