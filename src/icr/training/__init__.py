"""Training: the TRL trainer with DPO + NLL, reference log-probs, tracked loss terms."""
