"""Read-only tools over a database, and import: reader, explain, plot, gc, sql.

They never import the registry's writer, except ``import``, which builds a
campaign through it.
"""
