"""Code that more than one fedfhe host needs; kept small on purpose."""
