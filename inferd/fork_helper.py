"""The fork helper's preload: multiprocess's forkserver imports this module, once, before it forks
any worker. It names the process (`inferd: fork helper` in ps, top and py-spy) and imports what
every worker needs, so each worker starts as a fork of a process that has torch loaded but never
ran it. Nothing else imports this module: importing it is its whole job.
"""

from __future__ import annotations

from setproctitle import setproctitle

setproctitle("inferd: fork helper")

import torch  # noqa: E402, F401  (the slow import, done once for every worker)

import inferd.runners  # noqa: E402
import inferd.worker  # noqa: E402, F401
