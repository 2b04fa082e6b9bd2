"""PKI and release signing: the `fedfhe-pki` process, and the checks every service runs."""
