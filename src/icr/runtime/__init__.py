"""A run's storage and processes: the run directory, its lock, resumable jobs, status files, child processes."""
