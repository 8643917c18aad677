"""plugins/log_lb_selected.{lua,py}: one log line per member choice."""

import logging

import pytest

from wsproxy.scripting import PluginLoadError

PLUGIN = "log_lb_selected"
LOGGER = f"wsproxy.plugin.{PLUGIN}"


def lines(caplog, level=logging.INFO):
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER and r.levelno >= level]


def test_log_lb_selected_runtime_logs_each_choice(example, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    ex = example()
    session = ex.session()
    assert ex.lb_selected(session, "chat", "10.0.0.5:9001") is None
    assert ex.lb_selected(session, "chat", "10.0.0.6:9001", attempt=2, tried=("10.0.0.5:9001",)) is None
    assert lines(caplog) == [
        (logging.INFO, "conn=1 client=192.0.2.10:50000 pool=chat member=10.0.0.5:9001 attempt=1"),
        (logging.INFO, "conn=1 client=192.0.2.10:50000 pool=chat member=10.0.0.6:9001 attempt=2"),
    ]
    record = next(r for r in caplog.records if r.name == LOGGER)
    assert record.fields == {"plugin": PLUGIN}  # wsproxy.logs prints the plugin name with the line


def test_log_lb_selected_runtime_unknown_client_address(example, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    ex = example()
    ex.lb_selected(ex.session(client_addr=None), "default", "[2001:db8::1]:443")
    assert lines(caplog) == [(logging.INFO, "conn=1 client=- pool=default member=[2001:db8::1]:443 attempt=1")]


@pytest.mark.parametrize("level, number", [("debug", logging.DEBUG), ("warn", logging.WARNING),
                                           ("error", logging.ERROR)])
def test_log_lb_selected_runtime_level_option(example, caplog, level, number):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    ex = example({"level": level})
    ex.lb_selected(ex.session(), "chat", "10.0.0.5:9001")
    assert lines(caplog, logging.DEBUG) == [
        (number, "conn=1 client=192.0.2.10:50000 pool=chat member=10.0.0.5:9001 attempt=1")]


def test_log_lb_selected_runtime_refuses_an_unknown_level(example):
    with pytest.raises(PluginLoadError, match="level must be debug, info, warn or error"):
        example({"level": "loud"})


def test_log_lb_selected_runtime_errors_never_break_traffic(example):
    ex = example()
    assert ex.plugin.on_error == "continue"


def test_log_lb_selected_doc_snippet_loads(check_docs):
    check_docs()
