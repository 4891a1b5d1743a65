"""Persistence: SQLAlchemy models, engine set-up, migrations, and the one store that issues SQL."""
