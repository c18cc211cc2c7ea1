"""The method's engines: sampling, scoring, rewarding and pair selection (no run directory, no stages)."""
