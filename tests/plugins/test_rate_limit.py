"""plugins/rate_limit.{lua,py}: a token bucket per connection; Close 1008 when it runs dry."""

import pytest

from wsproxy.plugin import close

PLUGIN = "rate_limit"
LIMITED = close(1008, "message rate limit exceeded")
T0 = 500.0


def verdict(outcome):
    return None if outcome is None else outcome.verdict


def test_rate_limit_runtime_burst_then_close(example):
    ex = example({"rate": 2, "burst": 3})
    session = ex.session()
    for _ in range(3):
        assert ex.frame(session, "text", None, length=10, ts=T0) is None
    outcome = ex.frame(session, "text", None, length=10, ts=T0)
    assert verdict(outcome) == LIMITED and outcome.plugin == PLUGIN


def test_rate_limit_runtime_refill_at_rate(example):
    ex = example({"rate": 2, "burst": 3})
    session = ex.session()
    for _ in range(3):
        assert ex.frame(session, "text", ts=T0) is None
    assert ex.frame(session, "text", ts=T0 + 0.5) is None            # 0.5 s * 2/s = one token
    assert verdict(ex.frame(session, "text", ts=T0 + 0.5)) == LIMITED


def test_rate_limit_runtime_steady_rate_never_closes(example):
    ex = example({"rate": 2, "burst": 1})
    session = ex.session()
    for i in range(50):
        assert ex.frame(session, "binary", ts=T0 + i * 0.5) is None


def test_rate_limit_runtime_idle_refills_no_more_than_the_burst(example):
    ex = example({"rate": 10, "burst": 3})
    session = ex.session()
    assert ex.frame(session, "text", ts=T0) is None
    for _ in range(3):                                                  # an hour later: 3, not 36000
        assert ex.frame(session, "text", ts=T0 + 3600) is None
    assert verdict(ex.frame(session, "text", ts=T0 + 3600)) == LIMITED


def test_rate_limit_runtime_default_is_burst_40(example):
    ex = example()
    session = ex.session()
    for _ in range(40):
        assert ex.frame(session, "text", ts=T0) is None
    assert verdict(ex.frame(session, "text", ts=T0)) == LIMITED
    assert ex.frame(ex.session(), "text", ts=T0) is None


def test_rate_limit_runtime_buckets_are_per_connection(example):
    ex = example({"rate": 1, "burst": 2})
    one, two = ex.session(), ex.session()
    assert ex.frame(one, "text", ts=T0) is None
    assert ex.frame(one, "text", ts=T0) is None
    assert verdict(ex.frame(one, "text", ts=T0)) == LIMITED
    assert ex.frame(two, "text", ts=T0) is None
    assert ex.frame(two, "text", ts=T0) is None


def test_rate_limit_runtime_a_fragmented_message_counts_once(example):
    ex = example({"rate": 1, "burst": 2})
    session = ex.session()
    assert ex.frame(session, "text", b"a", fin=False, ts=T0) is None
    for _ in range(10):
        assert ex.frame(session, "cont", b"b", fin=False, ts=T0) is None
    assert ex.frame(session, "cont", b"c", ts=T0) is None               # message 1 ends
    assert ex.frame(session, "binary", b"d", ts=T0) is None             # message 2
    assert verdict(ex.frame(session, "binary", b"e", fin=False, ts=T0)) is None
    assert verdict(ex.frame(session, "cont", b"f", ts=T0)) == LIMITED   # message 3 ends


@pytest.mark.parametrize("opcode", ["ping", "pong", "close"])
def test_rate_limit_runtime_control_frames_do_not_count(example, opcode):
    ex = example({"rate": 1, "burst": 1})
    session = ex.session()
    for _ in range(5):
        assert ex.frame(session, opcode, b"", ts=T0) is None
    assert ex.frame(session, "text", ts=T0) is None


def test_rate_limit_runtime_messages_from_the_member_do_not_count(example):
    ex = example({"rate": 1, "burst": 1})
    session = ex.session()
    for _ in range(5):
        assert ex.frame(session, "text", dir="server", ts=T0) is None
    assert ex.frame(session, "text", ts=T0) is None


def test_rate_limit_runtime_uses_the_chain_clock_when_the_frame_has_no_time(example):
    # the proxy passes each frame's monotonic receive time; without one the chain reads its clock
    ex = example({"rate": 4, "burst": 2})
    session = ex.session()
    assert ex.frame(session, "text") is None
    assert ex.frame(session, "text") is None
    assert verdict(ex.frame(ex.session(), "text")) is None  # another connection, its own bucket
    assert verdict(ex.frame(session, "text")) == LIMITED
    other = ex.session()
    assert ex.frame(other, "text") is None and ex.frame(other, "text") is None
    ex.clock.now += 0.25                                     # 0.25 s * 4/s = one token
    assert ex.frame(other, "text") is None
    assert verdict(ex.frame(other, "text")) == LIMITED


def test_rate_limit_runtime_reads_no_payload(example):
    ex = example()
    assert ex.chain.payload_limit("WS_FRAME", "client") == 0
    assert not ex.chain.hooks("WS_MESSAGE", "client")


def test_rate_limit_doc_snippet_loads(check_docs):
    check_docs()
