"""``snapreg dashboard``: a live, read-only web page of a database's campaigns.

The only package that imports the web stack (Starlette, uvicorn, Jinja2, the
``dashboard`` extra): :mod:`~snapreg.dashboard.pages` gathers what each page shows
from the read-only tools, :mod:`~snapreg.dashboard.app` serves it, and
:mod:`~snapreg.dashboard.server` runs the server.
"""
