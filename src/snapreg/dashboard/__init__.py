"""``snapreg dashboard``: a live, read-only web page of a database's campaigns.

The only package that imports the web stack (Starlette, uvicorn, Jinja2, the
``dashboard`` extra): :mod:`~snapreg.dashboard.pages` gathers what each page shows
from the read-only tools (the campaign page's and the run page's own parts in
:mod:`~snapreg.dashboard.campaign_page` and :mod:`~snapreg.dashboard.run_page`),
:mod:`~snapreg.dashboard.app` serves it, and :mod:`~snapreg.dashboard.server` runs
the server.
"""
