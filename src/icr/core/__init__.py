"""Foundation: errors and faults, languages, typed records, files, prompts, models and chat rendering."""
