"""The pure rules and value objects: consistency, metadata, the active graph.

Nothing here touches a database, a file or MUSCLE3: the count rules, the topology
of a model, snapshot metadata and its validation, the public value objects, the
in-memory graph and its search, and the text of a workflow snapshot file.
"""
