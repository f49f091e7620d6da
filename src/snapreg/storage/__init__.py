"""Storage: engines, the schema's rows, fast statements, read queries, roles.

The only package that speaks SQL; the rules know nothing of it, and everything
above reaches the database through it.
"""
