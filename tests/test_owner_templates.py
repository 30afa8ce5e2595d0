"""A list's footer is a template its owner writes: it renders in Jinja's sandbox with
the documented variables only, so whoever sets it cannot run anything on the server."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from listserv import db
from listserv.models import MailingList
from tests.helpers import assert_one_line_error, mails_to, message, run_listserv, write_config

LIST = "dev@lists.example.org"


def escapes(marker: Path) -> list[str]:
    """Footers that would run a shell command (touching `marker`) or fill the memory."""
    command = f"touch {marker}"
    return [
        f"{{{{ cycler.__init__.__globals__.os.system('{command}') }}}}",
        f"{{{{ ''.__class__.__mro__[1].__subclasses__() }}}}{{{{ lipsum.__globals__"
        f"['os'].popen('{command}').read() }}}}",
        f"{{{{ self.__init__.__globals__.__builtins__.__import__('os').system('{command}') }}}}",
        "{{ 'x' * 1000000000 }}",
        "{{ 9 ** 9 ** 9 }}",
    ]


def set_footer(tmp_path: Path, db_url: str, template: str):
    config = write_config(tmp_path / "listserv.toml", db_url)
    return run_listserv("--config", config, "list", "set", LIST, "footer", template)


@pytest.mark.parametrize("index", range(5))
def test_a_footer_that_escapes_the_sandbox_is_refused(make_list, db_url, tmp_path, index):
    make_list(LIST)
    marker = tmp_path / "ran"
    assert_one_line_error(set_footer(tmp_path, db_url, escapes(marker)[index]), "footer")
    assert not marker.exists()


def test_a_footer_sees_only_the_documented_variables(make_list, db_url, tmp_path):
    make_list(LIST)
    assert_one_line_error(set_footer(tmp_path, db_url, "{{ range(3) }}"), "footer", "range")
    proc = set_footer(tmp_path, db_url, "{{ name }} <{{ address }}> {{ archive_url }} "
                      "{{ unsubscribe_url }} {{ mute_url }} {{ 'ab' * 2 }}")
    assert proc.returncode == 0, proc.stderr


def test_a_hostile_footer_stored_before_the_sandbox_runs_nothing(running, make_list, sink,
                                                                   engine, tmp_path):
    """Set in the database directly (as an older version let it be), it fails in the
    sandbox at the first post, which goes out with the default footer instead."""
    make_list(LIST, members=["bob@example.com", "carol@example.com"])
    marker = tmp_path / "ran"
    with db.session(engine) as s:
        s.execute(update(MailingList).values(footer=escapes(marker)[0]))
        s.commit()
    running.send("bob@example.com", [LIST], message())
    copy = mails_to(sink, "carol@example.com")[0]
    assert not marker.exists()
    assert "Mute this thread:" in copy.get_body().get_content()
