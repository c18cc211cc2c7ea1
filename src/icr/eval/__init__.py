"""Evaluation on X-AlpacaEval: the benchmark and outputs (`benchmark`, `outputs`), judges
(`judges`: base, cache, one module per backend) and judging (`judging`), metrics (`metrics`),
the leaderboard (`leaderboard`) and the whole run (`run`, what `icr eval` calls)."""
