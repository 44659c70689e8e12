"""Pure scheduling: tariffs, problems, plans. No I/O, no asyncio, no config files."""
