"""Coming from LLaMA-Factory: its keys (`keys.KEYS`, the one table) and `kubetune import llamafactory`."""
