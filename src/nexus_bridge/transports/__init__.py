"""How tasks reach agents and their replies come back: thin adapters over the queue service."""
