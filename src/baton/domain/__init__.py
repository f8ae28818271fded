"""Pure domain: statuses, transitions, ids and errors. No I/O, no SQLAlchemy, no asyncio."""
