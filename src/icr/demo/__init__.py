"""The embedded demo and its report."""
