"""Settings: config.example.toml and docs/configuration.md stay in step with the code, a bad
file stops `listserv` with one line naming the key, and the file and environment are found."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from listserv import config as config_mod
from listserv import db, roster
from listserv.config import Config, SmarthostConfig
from tests.helpers import LIST, assert_one_line_error, run_listserv, write_config

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "config.example.toml"
CONFIG_DOC = ROOT / "docs" / "configuration.md"


def defaults() -> dict[str, dict[str, object]]:
    return dataclasses.asdict(Config())


def test_example_documents_every_key_with_its_default():
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert set(example) == set(defaults()), "sections differ"
    for section, values in defaults().items():
        assert example[section] == values, f"[{section}] differs from listserv/config.py"
    assert config_mod.load(EXAMPLE, environ={}) == Config()


def test_example_explains_every_key():
    """Each key line follows a comment, or another key explained by the same comment."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\w+\s*=", line):
            block = lines[:i]
            while block and re.match(r"\w+\s*=", block[-1]):
                block.pop()
            assert block and block[-1].startswith("#"), f"no comment explains {line!r}"


def test_configuration_doc_documents_every_config_key():
    """Named as the errors name them, "[section] key": a bare "port" could be anything."""
    doc = CONFIG_DOC.read_text(encoding="utf-8")
    missing = [f"[{section}] {key}" for section, values in defaults().items()
               for key in values
               if not re.search(rf"\[{section}\]\s+`?{key}\b", doc)]
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"


@pytest.mark.parametrize("toml, named", [
    ("[smtp]\nprot = 8025\n", "prot"),
    ("[smpt]\nport = 8025\n", "smpt"),
    ("[smtp]\nport = \"8025\"\n", "port"),
    ("[delivery]\nconcurrency = true\n", "concurrency"),
    ("[delivery]\nretry_max_hours = 1.5\n", "retry_max_hours"),
    ("[delivery]\nretry_initial_seconds = -1\n", "retry_initial_seconds"),
    ("[web]\nbase_url = 8080\n", "base_url"),
    ("[smtp]\nprotocol = \"http\"\n", "protocol"),
    ("database = \"sqlite:///x.db\"\n", "database"),
    ("[smtp\nport = 8025\n", "line 1"),
    ("[[delivery.smarthost]]\nport = 25\n", "host"),
    ("[[delivery.smarthost]]\nhost = \"relay\"\nweight = 0\n", "weight"),
    ("[[delivery.smarthost]]\nhost = \"relay\"\nhots = \"x\"\n", "hots"),
    ("[delivery]\nsmarthost = [1]\n", "[delivery.smarthost]"),
    ("[delivery]\nsmarthost_port = 2525\n[[delivery.smarthost]]\nhost = \"relay\"\n",
     "smarthost_port"),
])
def test_bad_config_stops_listserv_with_one_line_naming_the_key(tmp_path, workdir, toml,
                                                               named):
    path = tmp_path / "bad.toml"
    path.write_text(toml, encoding="utf-8")
    assert_one_line_error(run_listserv("--config", path, "list", "ls", cwd=workdir), named)
    assert not (workdir / "listserv.db").exists()


def test_several_smarthosts_or_the_one_of_smarthost_host_and_port(tmp_path):
    path = tmp_path / "listserv.toml"
    path.write_text('[[delivery.smarthost]]\nhost = "relay1"\nweight = 3\n\n'
                    '[[delivery.smarthost]]\nhost = "relay2"\nport = 2525\n')
    assert config_mod.load(path, environ={}).delivery.smarthosts() == [
        SmarthostConfig("relay1", 25, 3), SmarthostConfig("relay2", 2525, 1)]
    path.write_text('[delivery]\nsmarthost_host = "relay"\nsmarthost_port = 2525\n')
    assert config_mod.load(path, environ={}).delivery.smarthosts() == [
        SmarthostConfig("relay", 2525, 1)]


def test_bad_config_from_the_environment_stops_serve(tmp_path, workdir):
    path = tmp_path / "bad.toml"
    path.write_text("[web]\nport = 8080\nsecrett = \"x\"\n", encoding="utf-8")
    proc = run_listserv("serve", env={"LISTSERV_CONFIG": str(path)}, cwd=workdir)
    assert_one_line_error(proc, "secrett")


@pytest.mark.parametrize("url", ["mysql://user:secret@db/listserv", "listserv.db"])
def test_unsupported_database_url_is_one_line_naming_its_source(tmp_path, workdir, url):
    path = write_config(tmp_path / "listserv.toml", url)
    proc = run_listserv("--config", path, "list", "ls", cwd=workdir)
    assert_one_line_error(proc, "[database] url")
    assert "secret" not in proc.stderr
    proc = run_listserv("list", "ls", env={"LISTSERV_DATABASE_URL": url}, cwd=workdir)
    assert_one_line_error(proc, "LISTSERV_DATABASE_URL")


def test_missing_config_file_is_one_line_naming_it(tmp_path, workdir):
    proc = run_listserv("--config", tmp_path / "nowhere.toml", "list", "ls", cwd=workdir)
    assert_one_line_error(proc, "nowhere.toml")


def test_config_file_not_in_utf8_is_one_line_naming_it(tmp_path, workdir):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[web]\nbase_url = "https://café.example/"\n'.encode("latin-1"))
    assert_one_line_error(run_listserv("--config", path, "list", "ls", cwd=workdir),
                          "latin1.toml")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The working directory, apart from the test database: the default listserv.db
    would land here, so a config that was ignored shows up as this file."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def list_exists(db_url: str, address: str = LIST) -> bool:
    engine = db.make_engine(db_url)
    try:
        with db.session(engine) as s:
            return roster.find_list(s, address) is not None
    finally:
        engine.dispose()


@pytest.mark.parametrize("how", ["option", "environment"])
def test_config_file_is_read_from_option_or_environment(tmp_path, workdir, db_url, how):
    path = write_config(tmp_path / "listserv.toml", db_url)
    args, env = (["--config", path], {}) if how == "option" else ([], {"LISTSERV_CONFIG":
                                                                        str(path)})
    proc = run_listserv(*args, "list", "create", LIST, env=env, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert list_exists(db_url)
    assert not (workdir / "listserv.db").exists()


def test_config_option_wins_over_environment(tmp_path, workdir, db_url):
    bad = tmp_path / "bad.toml"
    bad.write_text("[nope]\n", encoding="utf-8")
    good = write_config(tmp_path / "good.toml", db_url)
    proc = run_listserv("--config", good, "list", "create", LIST,
                        env={"LISTSERV_CONFIG": str(bad)}, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert list_exists(db_url)
    assert not (workdir / "listserv.db").exists()


def test_database_url_from_environment_overrides_the_file(tmp_path, workdir, db_url):
    unusable = "sqlite:////nonexistent-dir/listserv.db"
    path = write_config(tmp_path / "listserv.toml", unusable)
    proc = run_listserv("--config", path, "list", "create", LIST,
                        env={"LISTSERV_DATABASE_URL": db_url}, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert list_exists(db_url)
    assert config_mod.load(path, environ={"LISTSERV_DATABASE_URL": db_url}).database.url \
        == db_url


def test_without_a_file_the_defaults_apply(workdir):
    assert config_mod.load(None, environ={}) == Config()
    # The default database is listserv.db in the working directory.
    proc = run_listserv("list", "create", LIST, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert list_exists(f"sqlite:///{workdir / 'listserv.db'}")
