"""flanker, imported without its first-run noise.

On its first import flanker builds its address grammar tables with ply, which prints
dozens of "Symbol ... is unreachable" warnings to stderr: harmless, but alarming as
the first thing `listserv` shows a new user. Everything listserv uses of flanker is
imported here, with stderr held for that moment only.
"""

import contextlib
import io

with contextlib.redirect_stderr(io.StringIO()):
    from flanker import mime
    from flanker.addresslib import address as flanker_address

__all__ = ["flanker_address", "mime"]
