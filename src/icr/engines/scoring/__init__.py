"""The fast scorer: log pi(y|x) of many completions that share prompts."""
