"""flanker, imported without its first-run noise.

On its first import flanker builds its address grammar tables with ply, which prints
dozens of "Symbol ... is unreachable" warnings to stderr: harmless, but alarming as
the first thing `listserv` shows a new user. Everything listserv uses of flanker is
imported here, with stderr held for that moment only.
"""

import contextlib
import io

with contextlib.redirect_stderr(io.StringIO()):
    from flanker.addresslib import address as flanker_address
    from flanker.mime.message.headers.headers import MimeHeaders
    from flanker.mime.message.utils import to_unicode

__all__ = ["MimeHeaders", "flanker_address", "to_unicode"]
