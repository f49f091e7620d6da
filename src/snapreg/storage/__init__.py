"""Storage: engines, the read-only layer, the schema's rows, fast statements, roles.

The only package that speaks SQL; the rules know nothing of it, and everything
above reaches the database through it. Every reader opens a database through
:mod:`snapreg.storage.readonly`; every driver error becomes snapreg's through
:func:`snapreg.storage.transactions.storage_error`.
"""
