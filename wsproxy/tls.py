"""TLS contexts: the listeners' (termination, certificates by SNI) and the pools' (TLS to members).

One job: from the config's TLS tables to ``ssl.SSLContext`` objects, with every problem of a
certificate, key or CA file turned into a ConfigError that names the key and the file. The
same builders serve ``wsproxy check`` and every load (validate.py: a config whose files do
not load is refused, so a reload with a bad certificate keeps the old generation running)
and the composition root (app.py), which builds fresh contexts for each generation: a
reload reads the files again, new handshakes get the new certificates, and connections
already established keep the TLS session they have.

Relative paths are looked up next to the config file first, then in the working directory
(the rule of plugin paths, plugin_setup.py).

Listener defaults (modern, like Mozilla's "intermediate" profile): TLS 1.2 and up, no
compression, no renegotiation, the server's cipher order, session tickets on (OpenSSL's
default), ALPN ``http/1.1`` on http listeners (a client offering only ``h2`` gets no ALPN
and speaks HTTP/1.1, or leaves). Python's default cipher list for TLS 1.2 is ECDHE with
AES-GCM or ChaCha20; TLS 1.3 suites are OpenSSL's (Python cannot set them).
"""

from __future__ import annotations

import json
import logging
import ssl
import time

from wsproxy.config.paths import resolve_path
from wsproxy.errors import ConfigError, ConfigErrors
from wsproxy.logs import event

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
ALPN_HTTP = ["http/1.1"]
_EXPIRY_WARNING = 14 * 86400  # a certificate this close to its end is logged at every load


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


class _EncryptedKey(Exception):
    pass


def _no_password():
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise _EncryptedKey()


def _read_pem(path: str, where: str, marker: bytes, what: str, errors: list) -> bool:
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        errors.append(ConfigError(where, f"cannot read {_q(path)}: {exc.strerror or exc}"))
        return False
    if marker not in text:
        errors.append(ConfigError(where, f"{_q(path)} is not {what} (no {marker.decode()} block)"))
        return False
    return True


def load_pair(context: ssl.SSLContext, cert: str, key: str, where: str, errors: list) -> bool:
    """Load a certificate (chain) and its key into ``context``; False with the reasons in
    ``errors`` (at ``where.cert`` / ``where.key``) when the files are missing, unreadable, not
    PEM, encrypted, or do not belong together."""
    cert_ok = _read_pem(cert, f"{where}.cert", b"-----BEGIN CERTIFICATE-----", "a PEM certificate", errors)
    key_ok = _read_pem(key, f"{where}.key", b"PRIVATE KEY-----", "a PEM private key", errors)
    if not (cert_ok and key_ok):
        return False
    try:  # the certificates alone first, so a broken one is blamed on the cert file
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError as exc:
        errors.append(ConfigError(f"{where}.cert", f"{_q(cert)} is not a valid PEM certificate: {_reason(exc)}"))
        return False
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        errors.append(ConfigError(f"{where}.key", f"{_q(key)} is encrypted; expected an unencrypted key "
                                                  "(protect it with file permissions)"))
        return False
    except ssl.SSLError as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            message = f"{_q(key)} does not match the certificate {_q(cert)}"
        else:
            message = f"{_q(key)} is not a valid private key for {_q(cert)}: {_reason(exc)}"
        errors.append(ConfigError(f"{where}.key", message))
        return False
    except OSError as exc:  # vanished between the two reads
        errors.append(ConfigError(f"{where}.cert", f"cannot load {_q(cert)}: {exc.strerror or exc}"))
        return False
    return True


def _reason(exc: ssl.SSLError) -> str:
    return getattr(exc, "reason", None) or str(exc)


def certificate_info(path: str) -> dict:
    """The decoded first certificate of a PEM file (subjectAltName, notAfter, ...), or {}."""
    try:
        return ssl._ssl._test_decode_cert(path)  # the decoder behind getpeercert(); no public twin
    except (AttributeError, OSError, ssl.SSLError, ValueError):
        return {}


def dns_names(info: dict) -> tuple[str, ...]:
    """The DNS names of a decoded certificate's subjectAltName, lowercased."""
    return tuple(value.lower() for kind, value in info.get("subjectAltName", ()) if kind == "DNS")


def _warn_expiry(path: str, info: dict) -> None:
    not_after = info.get("notAfter")
    if not not_after:
        return
    try:
        left = ssl.cert_time_to_seconds(not_after) - time.time()
    except ValueError:
        return
    if left < _EXPIRY_WARNING:
        what = "certificate expired" if left < 0 else "certificate expires in %d day(s)" % (left // 86400)
        event(logging.WARNING, what, file=path, not_after=not_after)


# -- listeners ---------------------------------------------------------------------------------

class Terminator:
    """One generation's TLS for one listener: ``context`` (given to every handshake) holds
    the default certificate; when the listener has more, its ``sni_callback`` switches a
    handshake to the context of the name the client asked for: an exact name first, then a
    wildcard ``*.parent`` (one label, as certificates match), else the default stays."""

    __slots__ = ("context", "handshake_timeout", "exact", "wildcard")

    def __init__(self, context: ssl.SSLContext, by_name: dict, handshake_timeout: float) -> None:
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.exact = {name: ctx for name, ctx in by_name.items() if not name.startswith("*.")}
        self.wildcard = {name[2:]: ctx for name, ctx in by_name.items() if name.startswith("*.")}
        if self.exact or self.wildcard:
            context.sni_callback = self._pick

    def _pick(self, ssl_object, server_name, _context) -> None:
        if not server_name:
            return None
        name = server_name.lower()  # an A-label: ssl decodes nothing
        chosen = self.exact.get(name)
        if chosen is None:
            _label, dot, parent = name.partition(".")
            chosen = self.wildcard.get(parent) if dot else None
        if chosen is not None and chosen is not self.context:
            ssl_object.context = chosen
        return None

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        """The context a handshake naming ``server_name`` ends up with (tests, the plan)."""
        if server_name:
            name = server_name.lower()
            found = self.exact.get(name) or self.wildcard.get(name.partition(".")[2])
            if found is not None:
                return found
        return self.context


def server_context(tls, alpn: bool = True) -> ssl.SSLContext:
    """A server context with the listener's protocol settings and no certificate yet."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    if alpn:
        context.set_alpn_protocols(ALPN_HTTP)
    if tls.ciphers:
        context.set_ciphers(tls.ciphers)  # ssl.SSLError when nothing matches
    return context


def listener_tls(tls, source: str | None, where: str, *, alpn: bool = True, warn: bool = False) -> Terminator:
    """The Terminator of a listener's ``tls`` table (``where``: its key path, for errors).
    Raises ConfigErrors listing every file that does not load. ``alpn``: offer http/1.1
    (http listeners; a tcp listener's protocol is not ours to name). ``warn``: log
    certificates that expired or expire within two weeks."""
    errors: list[ConfigError] = []
    try:
        server_context(tls, alpn)
    except ssl.SSLError as exc:
        raise ConfigErrors([ConfigError(f"{where}.ciphers", f"no cipher matches {_q(tls.ciphers)}: "
                                                            f"{_reason(exc)}")], source or "<config>") from None
    entries = []  # (where, cert, key, names)
    if tls.cert and tls.key:
        entries.append((where, tls.cert, tls.key, ()))
    for i, entry in enumerate(tls.certs):
        entries.append((f"{where}.certs[{i}]", entry.cert, entry.key, entry.names))
    contexts = []
    for entry_where, cert, key, names in entries:
        cert_path, key_path = resolve_path(cert, source), resolve_path(key, source)
        context = server_context(tls, alpn)
        if not load_pair(context, cert_path, key_path, entry_where, errors):
            continue
        info = certificate_info(cert_path)
        if warn:
            _warn_expiry(cert_path, info)
        if entry_where != where and not names:
            names = dns_names(info)
            if not names:
                errors.append(ConfigError(f"{entry_where}.names", f"{_q(cert_path)} has no DNS names; expected "
                                                                  'names = ["a.example.com", ...]'))
        contexts.append((context, names))
    if not contexts and not errors:
        errors.append(ConfigError(where, "no certificate; expected cert and key, or certs = [...]"))
    if errors:
        raise ConfigErrors(errors, source or "<config>")
    by_name: dict = {}
    for context, names in contexts:
        for name in names:
            by_name.setdefault(name, context)  # the first certificate that claims a name serves it
    return Terminator(contexts[0][0], by_name, tls.handshake_timeout)


def hsts_header(hsts) -> tuple:
    """``(("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),)`` or ()."""
    if hsts is None:
        return ()
    value = "max-age=%d" % int(hsts.max_age)
    if hsts.include_subdomains:
        value += "; includeSubDomains"
    if hsts.preload:
        value += "; preload"
    return (("Strict-Transport-Security", value),)


# -- members -----------------------------------------------------------------------------------

class MemberTls:
    """A pool's TLS to its members: the client context, and the name each member is sent
    in SNI and checked against (``sni``, else the member's host: a name goes in SNI, an IP
    address is checked against the certificate's IP addresses and sends no SNI)."""

    __slots__ = ("context", "sni")

    def __init__(self, context: ssl.SSLContext, sni: str | None) -> None:
        self.context = context
        self.sni = sni

    def server_hostname(self, host: str) -> str:
        return self.sni or host


def member_tls(tls, source: str | None, where: str) -> MemberTls:
    """The MemberTls of a pool's ``tls`` table; raises ConfigErrors (CA or client files)."""
    errors: list[ConfigError] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif tls.ca:
        ca = resolve_path(tls.ca, source)
        if _read_pem(ca, f"{where}.ca", b"-----BEGIN CERTIFICATE-----", "a PEM CA bundle", errors):
            try:
                context.load_verify_locations(cafile=ca)
            except ssl.SSLError as exc:
                errors.append(ConfigError(f"{where}.ca", f"{_q(ca)} is not a valid PEM CA bundle: {_reason(exc)}"))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert and tls.key:
        load_pair(context, resolve_path(tls.cert, source), resolve_path(tls.key, source), where, errors)
    if errors:
        raise ConfigErrors(errors, source or "<config>")
    return MemberTls(context, tls.sni)


def describe_error(exc: BaseException) -> str:
    """A TLS failure for a log line: "TLS: certificate verify failed: ..." rather than
    OSError's "[SSL: CERTIFICATE_VERIFY_FAILED] ... (_ssl.c:1006)"."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {getattr(exc, 'reason', None) or exc.strerror or exc}"
    return str(exc) or type(exc).__name__


# -- validation --------------------------------------------------------------------------------

def check_tls(config, key) -> list[ConfigError]:
    """Every TLS file of ``config`` loaded once (``key(section, name)`` writes key paths):
    the errors of those that do not."""
    errors: list[ConfigError] = []
    for name, listener in config.listeners.items():
        if listener.tls is not None:
            try:
                listener_tls(listener.tls, config.source, key("listeners", name) + ".tls",
                             alpn=listener.mode == "http")
            except ConfigErrors as exc:
                errors.extend(exc.errors)
    for name, pool in config.pools.items():
        if pool.tls is not None:
            try:
                member_tls(pool.tls, config.source, key("pools", name) + ".tls")
            except ConfigErrors as exc:
                errors.extend(exc.errors)
    return errors
