"""plugins/fallback_pool.{lua,py}: on LB_FAILED, reselect in the fallback pool."""

import logging

import pytest

from wsproxy.plugin import reselect

PLUGIN = "fallback_pool"
LOGGER = f"wsproxy.plugin.{PLUGIN}"


def verdict(outcome):
    return None if outcome is None else outcome.verdict


@pytest.mark.parametrize("reason, status", [("no_member", None), ("refused", None), ("timeout", None),
                                            ("tls", None), ("status", 503)])
def test_fallback_pool_runtime_any_failure_falls_back(example, caplog, reason, status):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    ex = example()
    member = None if reason == "no_member" else "10.0.0.5:9001"
    outcome = ex.lb_failed(ex.session(), "chat", reason, member=member, status=status)
    assert verdict(outcome) == reselect("fallback") and outcome.plugin == PLUGIN
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        f"pool chat failed ({reason}), falling back to fallback"]


def test_fallback_pool_runtime_a_failing_fallback_is_left_to_the_core(example):
    ex = example()
    assert ex.lb_failed(ex.session(), "fallback", "no_member", attempt=2) is None
    assert ex.lb_failed(ex.session(), "fallback", "refused", attempt=2, member="10.0.1.1:80") is None


def test_fallback_pool_runtime_pool_option(example):
    ex = example({"pool": "standby"})
    session = ex.session()
    assert verdict(ex.lb_failed(session, "chat", "refused", member="10.0.0.5:9001")) == reselect("standby")
    assert ex.lb_failed(session, "standby", "refused", attempt=2, member="10.0.1.1:80") is None
    # "fallback" is now an ordinary pool: it falls back to standby too
    assert verdict(ex.lb_failed(session, "fallback", "no_member")) == reselect("standby")


def test_fallback_pool_runtime_retries_the_same_pool_first(example):
    ex = example({"retries": 2})
    session = ex.session()
    tried = ()
    for attempt in (1, 2):
        member = f"10.0.0.{attempt}:9001"
        tried += (member,)
        outcome = ex.lb_failed(session, "chat", "refused", attempt=attempt, member=member, tried=tried)
        assert verdict(outcome) == reselect()  # another member of "chat"
    outcome = ex.lb_failed(session, "chat", "timeout", attempt=3, member="10.0.0.3:9001", tried=tried)
    assert verdict(outcome) == reselect("fallback")


def test_fallback_pool_runtime_no_member_left_skips_the_retries(example):
    ex = example({"retries": 2})
    assert verdict(ex.lb_failed(ex.session(), "chat", "no_member")) == reselect("fallback")


def test_fallback_pool_doc_snippet_loads(check_docs):
    check_docs()
