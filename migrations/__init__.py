"""snapreg's Alembic revisions, shipped inside the wheel as ``snapreg.migrations``."""
