"""The composition root: ``hangar server run`` builds its process here.

This is the only package that imports both the control plane and the agent.
It builds the API, the control plane's loops and, on the control plane's
own host, an agent whose link to the control plane is in-process
(``server.local``); agents on other hosts are built by ``hangar agent run``
from the same parts (``agent.assemble``).
"""
