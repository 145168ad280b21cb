"""The engine's threads, named for the operating system as well as for Python.

Python 3.11 names a thread for itself only: ``top -H``, ``ps -L`` and ``/proc/<pid>/task/*/comm``
show every thread of the engine as ``python``. :class:`Thread` gives the kernel its name too
(``engine-committer`` becomes ``committer``: the kernel keeps 15 characters), so an operator can
see which part of the engine uses the CPU, and ``bench/mllp_ingest.py`` reports CPU per thread.
The name is set by setproctitle's ``setthreadtitle`` (``prctl(PR_SET_NAME)`` on Linux).
"""

from __future__ import annotations

import contextlib
import threading

from setproctitle import setthreadtitle


def os_name(name: str) -> str:
    """The kernel's name for the engine thread ``name``: without the ``engine-`` prefix, 15 characters at most."""
    return name.removeprefix("engine-")[:15]


class Thread(threading.Thread):
    """A ``threading.Thread`` that names itself for the operating system when it starts."""

    def run(self) -> None:
        with contextlib.suppress(Exception):  # a platform without thread names: the thread runs all the same
            setthreadtitle(os_name(self.name))
        super().run()
