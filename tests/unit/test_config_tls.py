"""TLS configuration (issue #7): listener ``tls`` and ``hsts``, pool ``tls``, the file checks
that make a bad certificate a config error, and wsproxy/tls.py's contexts and SNI choice.

Certificates are made with ``trustme``; files are written to tmp_path and the config points at
them by absolute path (or relative to the config file, where that is the point)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from wsproxy.config import format_plan, load_config, parse_config
from wsproxy.config import validate
from wsproxy.config.paths import resolve_path
from wsproxy.config.schema import HstsConfig, MemberTlsConfig, TlsConfig
from wsproxy.errors import ConfigErrors
from wsproxy import tls as wtls


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def pair(tmp_path: Path, cert, stem: str) -> tuple[str, str]:
    cert_path, key_path = tmp_path / f"{stem}.pem", tmp_path / f"{stem}.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    return str(cert_path), str(key_path)


def doc(listener: dict | None = None, pool: dict | None = None, mode: str = "http") -> dict:
    lst = {"bind": "127.0.0.1:8443", **(listener or {})}
    if mode == "http":
        lst.setdefault("routes", [{"pool": "web"}])
    else:
        lst.update(mode="tcp", pool="web")
    return {"listeners": {"public": lst}, "pools": {"web": {"members": ["127.0.0.1:9001"], **(pool or {})}}}


def errors(data: dict) -> list[str]:
    try:
        parse_config(data)
    except ConfigErrors as exc:
        return [str(e) for e in exc.errors]
    return []


# --- listener tls: shapes and defaults ---------------------------------------------------


def test_config_md_shape_and_defaults(tmp_path, ca):
    cert, key = pair(tmp_path, ca.issue_cert("example.com"), "site")
    config = parse_config(doc({"tls": {"cert": cert, "key": key}}))
    tls = config.listeners["public"].tls
    assert tls == TlsConfig(cert=cert, key=key)
    assert (tls.certs, tls.handshake_timeout, tls.min_version, tls.ciphers) == ((), 10.0, "1.2", None)
    assert config.listeners["public"].hsts is None
    assert "listener.tls" not in validate.NOT_SUPPORTED_YET and list(validate.NOT_SUPPORTED_YET) == ["server.state"]


def test_relative_paths_are_read_next_to_the_config_file(tmp_path, ca, monkeypatch):
    pair(tmp_path, ca.issue_cert("example.com"), "site")
    conf = tmp_path / "site.conf"
    conf.write_text('[listeners.public]\nbind = "127.0.0.1:8443"\ntls = { cert = "site.pem", key = "site.key" }\n'
                    'routes = [{ pool = "web" }]\n[pools.web]\nmembers = ["127.0.0.1:9001"]\n')
    monkeypatch.chdir("/")
    config = load_config(str(conf))
    assert config.listeners["public"].tls.cert == "site.pem"  # as written; resolved when loaded
    assert resolve_path("site.pem", str(conf)) == str(tmp_path / "site.pem")
    assert resolve_path("/abs/x.pem", str(conf)) == "/abs/x.pem"


def test_every_key(tmp_path, ca):
    cert, key = pair(tmp_path, ca.issue_cert("a.example"), "a")
    config = parse_config(doc({
        "tls": {"certs": [{"cert": cert, "key": key}, {"cert": cert, "key": key, "names": ["*.B.example", "b.example."]}],
                "handshake_timeout": "3s", "min_version": "1.3", "ciphers": "ECDHE+AESGCM"},
        "hsts": {"max_age": "365d", "include_subdomains": True, "preload": True},
    }))
    listener = config.listeners["public"]
    tls = listener.tls
    assert tls.cert is None and len(tls.certs) == 2
    assert tls.certs[0].names == () and tls.certs[1].names == ("*.b.example", "b.example")
    assert (tls.handshake_timeout, tls.min_version, tls.ciphers) == (3.0, "1.3", "ECDHE+AESGCM")
    assert listener.hsts == HstsConfig(31536000.0, True, True)
    plan = format_plan(config)
    assert f"tls {cert}" in plan and "TLS 1.3+  handshake 3s" in plan and "[*.b.example, b.example]" in plan
    assert "[its DNS names] (default)" in plan and "hsts 365d  includeSubDomains  preload" in plan


def test_min_version_as_a_toml_float_and_its_errors(tmp_path, ca):
    cert, key = pair(tmp_path, ca.issue_cert("a.example"), "a")
    assert parse_config(doc({"tls": {"cert": cert, "key": key, "min_version": 1.3}})).listeners[
        "public"].tls.min_version == "1.3"
    (found,) = errors(doc({"tls": {"cert": cert, "key": key, "min_version": "1.1"}}))
    assert found.startswith('listeners.public.tls.min_version: expected "1.2" or "1.3", got "1.1"')


@pytest.mark.parametrize("tls, expected", [
    ({"cert": "a.pem"}, ['listeners.public.tls.key: missing; expected a PEM file like "site.key"']),
    ({}, ['listeners.public.tls.cert: missing', 'listeners.public.tls.key: missing']),
    ({"certs": []}, ["listeners.public.tls.certs: expected an array of certificates"]),
    ({"certs": [{"cert": "a.pem"}]}, ["listeners.public.tls.certs[0].key: missing"]),
    ({"certs": [{"cert": "a.pem", "key": "a.key", "names": []}]}, ["listeners.public.tls.certs[0].names: empty"]),
    ({"certs": [{"cert": "a.pem", "key": "a.key", "names": ["*"]}]}, ["names[0]: expected a host name"]),
    ({"certs": [{"cert": "a.pem", "key": "a.key", "names": ["a.*.example"]}]}, ["names[0]: expected a host name"]),
    ({"certs": [{"cert": "a.pem", "key": "a.key", "names": ["*.com"]}]}, ["names[0]: expected a host name"]),
    ({"certs": [{"cert": "a.pem", "key": "a.key", "names": ["10.0.0.1"]}]}, ["names[0]: clients send no IP address"]),
    ({"cert": "a.pem", "key": "a.key", "certz": 1}, ['listeners.public.tls.certz: unknown key "certz"; did you mean']),
    ({"cert": "a.pem", "key": "a.key", "handshake_timeout": "0s"}, ["tls.handshake_timeout: expected a duration above"]),
    ("site.pem", ['listeners.public.tls: expected a table like { cert = "site.pem", key = "site.key" }']),
])
def test_shape_errors(tls, expected):
    found = errors(doc({"tls": tls}))
    for text in expected:
        assert any(text in e for e in found), (text, found)


def test_tls_and_redirect_https_exclude_each_other(tmp_path, ca):
    cert, key = pair(tmp_path, ca.issue_cert("a.example"), "a")
    assert errors(doc({"tls": {"cert": cert, "key": key}, "redirect_https": "https://example.com"})) == [
        "listeners.public.redirect_https: a TLS listener serves https itself; redirect_https belongs on a plain "
        "listener (expected one of tls or redirect_https)"]


# --- hsts ---------------------------------------------------------------------------------


def test_hsts_true_is_a_year_and_false_is_off(tmp_path, ca):
    cert, key = pair(tmp_path, ca.issue_cert("a.example"), "a")
    on = parse_config(doc({"tls": {"cert": cert, "key": key}, "hsts": True})).listeners["public"].hsts
    assert on == HstsConfig() and on.max_age == 365 * 86400
    assert wtls.hsts_header(on) == (("Strict-Transport-Security", "max-age=31536000"),)
    assert parse_config(doc({"tls": {"cert": cert, "key": key}, "hsts": False})).listeners["public"].hsts is None
    assert wtls.hsts_header(None) == ()
    assert wtls.hsts_header(HstsConfig(60.0, True, False)) == (
        ("Strict-Transport-Security", "max-age=60; includeSubDomains"),)


def test_hsts_errors(tmp_path, ca):
    cert, key = pair(tmp_path, ca.issue_cert("a.example"), "a")
    assert errors(doc({"hsts": True})) == [
        "listeners.public.hsts: only applies to a TLS listener (one with tls = { cert, key }); browsers ignore "
        "Strict-Transport-Security over plain http"]
    assert errors(doc({"tls": {"cert": cert, "key": key}, "hsts": True}, mode="tcp")) == [
        'listeners.public.hsts: only applies to mode = "http"; this listener is mode = "tcp"']
    assert errors(doc({"tls": {"cert": cert, "key": key}, "hsts": {"preload": True}})) == [
        'listeners.public.hsts.preload: the preload list (hstspreload.org) requires include_subdomains = true '
        'and max_age of at least "365d"']
    assert errors(doc({"tls": {"cert": cert, "key": key}, "hsts": {"max_age": 5}})) == [
        'listeners.public.hsts.max_age: expected a string like "5s", got integer 5']
    assert errors(doc({"tls": {"cert": cert, "key": key}, "hsts": "yes"}))[0].startswith(
        "listeners.public.hsts: expected true, or a table")


# --- the files: loaded at check and load time ---------------------------------------------


def test_file_errors_name_the_key_and_the_file(tmp_path, ca):
    good_cert, good_key = pair(tmp_path, ca.issue_cert("a.example"), "good")
    _other_cert, other_key = pair(tmp_path, ca.issue_cert("b.example"), "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    missing = tmp_path / "nope" / "missing.key"
    cases = [
        ({"cert": str(missing.with_suffix(".pem")), "key": good_key},
         f'listeners.public.tls.cert: cannot read "{missing.with_suffix(".pem")}": No such file or directory'),
        ({"cert": good_cert, "key": str(missing)},
         f'listeners.public.tls.key: cannot read "{missing}": No such file or directory'),
        ({"cert": str(garbage), "key": good_key},
         f'listeners.public.tls.cert: "{garbage}" is not a PEM certificate (no -----BEGIN CERTIFICATE----- block)'),
        ({"cert": good_cert, "key": str(garbage)},
         f'listeners.public.tls.key: "{garbage}" is not a PEM private key (no PRIVATE KEY----- block)'),
        ({"cert": str(broken), "key": good_key}, f'listeners.public.tls.cert: "{broken}" is not a valid PEM certificate'),
        ({"cert": good_cert, "key": other_key},
         f'listeners.public.tls.key: "{other_key}" does not match the certificate "{good_cert}"'),
        ({"certs": [{"cert": good_cert, "key": good_key}, {"cert": good_cert, "key": other_key}]},
         f'listeners.public.tls.certs[1].key: "{other_key}" does not match the certificate "{good_cert}"'),
        ({"cert": good_cert, "key": good_key, "ciphers": "NOTHING-MATCHES"},
         'listeners.public.tls.ciphers: no cipher matches "NOTHING-MATCHES"'),
    ]
    for tls, expected in cases:
        found = errors(doc({"tls": tls}))
        assert len(found) == 1 and found[0].startswith(expected), (expected, found)


def test_an_encrypted_key_is_refused_without_a_prompt(tmp_path, ca):
    leaf = ca.issue_cert("a.example")
    cert, _key = pair(tmp_path, leaf, "enc")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = tmp_path / "enc-secret.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    assert errors(doc({"tls": {"cert": cert, "key": str(encrypted)}})) == [
        f'listeners.public.tls.key: "{encrypted}" is encrypted; expected an unencrypted key '
        "(protect it with file permissions)"]


def test_an_entry_without_names_needs_dns_names_in_its_certificate(tmp_path, ca):
    cert, key = pair(tmp_path, ca.issue_cert("10.0.0.1"), "ip-only")  # an IP address SAN, no DNS name
    assert errors(doc({"tls": {"certs": [{"cert": cert, "key": key}]}})) == [
        f'listeners.public.tls.certs[0].names: "{cert}" has no DNS names; expected names = ["a.example.com", ...]']
    assert errors(doc({"tls": {"certs": [{"cert": cert, "key": key, "names": ["ip.example"]}]}})) == []
    assert errors(doc({"tls": {"cert": cert, "key": key}})) == []  # the default needs no names


# --- wsproxy/tls.py: the contexts ---------------------------------------------------------


def test_terminator_defaults_and_sni_choice(tmp_path, ca):
    a = pair(tmp_path, ca.issue_cert("a.example", "www.a.example"), "a")
    b = pair(tmp_path, ca.issue_cert("*.b.example"), "b")
    c = pair(tmp_path, ca.issue_cert("c.example"), "c")
    config = parse_config(doc({"tls": {"cert": c[0], "key": c[1], "certs": [
        {"cert": a[0], "key": a[1]}, {"cert": b[0], "key": b[1]}, {"cert": c[0], "key": c[1], "names": ["a.example"]},
    ]}}))
    term = wtls.listener_tls(config.listeners["public"].tls, config.source, "listeners.public.tls")
    context = term.context
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION and context.options & ssl.OP_NO_RENEGOTIATION
    assert not context.options & ssl.OP_NO_TICKET  # session tickets on
    assert context.sni_callback is not None and term.handshake_timeout == 10.0
    by_a = term.context_for("a.example")
    assert by_a is term.context_for("WWW.A.EXAMPLE") and by_a is not context  # names from the certificate
    assert term.context_for("x.b.example") is term.context_for("y.b.example") not in (context, by_a)
    for name in ("b.example", "z.y.b.example", "unknown.example", None, ""):
        assert term.context_for(name) is context, name  # the top-level pair
    # one context per certificate, the first entry that claims a name wins ("a.example": entry 0)
    assert len({id(ctx) for ctx in (context, by_a, term.context_for("x.b.example"))}) == 3


def test_one_certificate_installs_no_sni_callback(tmp_path, ca):
    cert, key = pair(tmp_path, ca.issue_cert("a.example"), "a")
    term = wtls.listener_tls(TlsConfig(cert, key, min_version="1.3"), None, "listeners.x.tls")
    assert term.context.sni_callback is None and term.context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_the_first_entry_is_the_default_without_a_top_level_pair(tmp_path, ca):
    a = pair(tmp_path, ca.issue_cert("a.example"), "a")
    b = pair(tmp_path, ca.issue_cert("b.example"), "b")
    config = parse_config(doc({"tls": {"certs": [{"cert": b[0], "key": b[1]}, {"cert": a[0], "key": a[1]}]}}))
    term = wtls.listener_tls(config.listeners["public"].tls, None, "listeners.public.tls")
    assert term.context_for("b.example") is term.context and term.context_for("a.example") is not term.context


def test_expired_certificate_loads_with_a_warning(tmp_path, ca, caplog):
    import datetime

    old = ca.issue_cert("old.example", not_after=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
    cert, key = pair(tmp_path, old, "old")
    with caplog.at_level("WARNING", logger="wsproxy"):
        wtls.listener_tls(TlsConfig(cert, key), None, "listeners.x.tls", warn=True)
    assert [r.getMessage() for r in caplog.records] == ["certificate expired"]


# --- pool tls -------------------------------------------------------------------------------


def test_pool_tls_shapes(tmp_path, ca):
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert, key = pair(tmp_path, ca.issue_cert("client.example"), "client")
    assert parse_config(doc(pool={"tls": True})).pools["web"].tls == MemberTlsConfig()
    assert parse_config(doc(pool={"tls": False})).pools["web"].tls is None
    full = parse_config(doc(pool={"tls": {"ca": str(ca_path), "sni": "API.Internal", "cert": cert, "key": key}}))
    assert full.pools["web"].tls == MemberTlsConfig(str(ca_path), True, "api.internal", cert, key)
    plan = format_plan(full)
    assert f"tls to members: verify with {ca_path}, sni api.internal, client cert {cert}" in plan
    assert "tls to members: verify off, sni the member's host name" in format_plan(
        parse_config(doc(pool={"tls": {"verify": False}})))


@pytest.mark.parametrize("tls, expected", [
    ({"verify": False, "ca": "ca.pem"}, "pools.web.tls.ca: verify = false checks nothing"),
    ({"cert": "c.pem"}, "pools.web.tls.key: missing; a client certificate needs its key"),
    ({"key": "c.key"}, "pools.web.tls.cert: missing; a client key needs its certificate"),
    ({"sni": "10.0.0.1"}, 'pools.web.tls.sni: expected a host name like "api.internal", got "10.0.0.1"'),
    ({"ca": "/nonexistent/ca.pem"}, 'pools.web.tls.ca: cannot read "/nonexistent/ca.pem"'),
    ({"verfy": True}, 'pools.web.tls.verfy: unknown key "verfy"; did you mean "verify"?'),
    ("yes", "pools.web.tls: expected true, or a table"),
])
def test_pool_tls_errors(tls, expected):
    found = errors(doc(pool={"tls": tls}))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_member_tls_contexts(tmp_path, ca):
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    strict = wtls.member_tls(MemberTlsConfig(ca=str(ca_path)), None, "pools.web.tls")
    assert strict.context.verify_mode == ssl.CERT_REQUIRED and strict.context.check_hostname
    assert len(strict.context.get_ca_certs()) == 1
    assert strict.server_hostname("10.0.0.5") == "10.0.0.5" and strict.server_hostname("api.local") == "api.local"
    named = wtls.member_tls(MemberTlsConfig(ca=str(ca_path), sni="api.internal"), None, "pools.web.tls")
    assert named.server_hostname("10.0.0.5") == "api.internal"
    loose = wtls.member_tls(MemberTlsConfig(verify=False), None, "pools.web.tls")
    assert loose.context.verify_mode == ssl.CERT_NONE and not loose.context.check_hostname
    system = wtls.member_tls(MemberTlsConfig(), None, "pools.web.tls")
    assert system.context.verify_mode == ssl.CERT_REQUIRED  # the system's CAs


def test_describe_error():
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    assert wtls.describe_error(verify) == "TLS: certificate verify failed: unable to get local issuer certificate"
    other = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    other.reason = "WRONG_VERSION_NUMBER"
    assert wtls.describe_error(other) == "TLS: WRONG_VERSION_NUMBER"
