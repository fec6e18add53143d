"""OpenPGP key facts for apt repository keys (pure Python, no gpg on the host).

- C(openpgp_fingerprints) takes a key file's content -- ASCII-armoured text, or the base64
  that C(ansible.builtin.slurp) returns for a binary or armoured file -- and returns the
  fingerprints of its primary keys (upper-case hex), in file order. v4 keys (RFC 4880 12.2:
  SHA-1 over 0x99, a two-octet length and the public-key packet body) and v6 keys (RFC 9580
  5.5.4: SHA-256 over 0x9B, a four-octet length and the body). Subkeys are not listed: apt
  trusts a key file by its primary keys.
- C(openpgp_fingerprint_normalize) upper-cases a fingerprint and drops spaces, so a
  fingerprint copied from C(gpg --fingerprint) output ("02182E60 104F ...") compares equal.

The roles use them to check a downloaded repository key on every run: a key file whose
primary key is not the pinned fingerprint is replaced, and a replacement that still does not
match fails the run (nvidia_driver, cloudflared).
"""

import base64
import binascii
import hashlib
import re

from ansible.errors import AnsibleFilterError

PUBLIC_KEY = 6
PUBLIC_SUBKEY = 14
_ARMOR_RE = re.compile(
    r"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(?P<body>.*?)-----END PGP PUBLIC KEY BLOCK-----",
    re.S)


def _dearmor(text):
    blocks = []
    for match in _ARMOR_RE.finditer(text):
        lines = match.group("body").splitlines()
        # Armour headers ("Comment: ...") end at the first blank line (RFC 9580 6.2).
        blank = [i for i, line in enumerate(lines) if not line.strip()]
        lines = lines[blank[0] + 1:] if blank else [line for line in lines if ":" not in line]
        data = "".join(line.strip() for line in lines
                       if line.strip() and not line.startswith("="))  # "=XXXX" is the CRC-24
        try:
            blocks.append(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise AnsibleFilterError("openpgp_fingerprints: the armoured key is not valid base64: %s" % exc)
    return b"".join(blocks)


def _key_bytes(content):
    if isinstance(content, bytes):
        raw = content
    elif isinstance(content, str):
        if "-----BEGIN PGP PUBLIC KEY BLOCK-----" in content:
            return _dearmor(content)
        try:
            raw = base64.b64decode("".join(content.split()), validate=True)
        except (binascii.Error, ValueError):
            raise AnsibleFilterError(
                "openpgp_fingerprints: expected an ASCII-armoured key or the base64 of a key file "
                "(ansible.builtin.slurp), got %r" % content[:60])
    else:
        raise AnsibleFilterError("openpgp_fingerprints: expected text or bytes, got %r" % type(content).__name__)
    if b"-----BEGIN PGP PUBLIC KEY BLOCK-----" in raw:
        return _dearmor(raw.decode("ascii", "replace"))
    return raw


def _packets(data):
    """Yield (tag, body) for every packet (RFC 9580 4.2: old and new packet formats)."""
    pos = 0
    while pos < len(data):
        header = data[pos]
        if not header & 0x80:
            raise AnsibleFilterError("openpgp_fingerprints: not an OpenPGP packet at byte %d" % pos)
        if header & 0x40:  # new format
            tag = header & 0x3F
            first = data[pos + 1]
            if first < 192:
                length, pos = first, pos + 2
            elif first < 224:
                length, pos = ((first - 192) << 8) + data[pos + 2] + 192, pos + 3
            elif first == 255:
                length, pos = int.from_bytes(data[pos + 2:pos + 6], "big"), pos + 6
            else:
                raise AnsibleFilterError("openpgp_fingerprints: partial body lengths are not used by keys")
        else:  # old format
            tag = (header >> 2) & 0x0F
            kind = header & 0x03
            if kind == 3:
                raise AnsibleFilterError("openpgp_fingerprints: indeterminate packet length")
            size = 1 << kind
            length = int.from_bytes(data[pos + 1:pos + 1 + size], "big")
            pos += 1 + size
        body = data[pos:pos + length]
        if len(body) != length:
            raise AnsibleFilterError("openpgp_fingerprints: truncated packet (tag %d)" % tag)
        yield tag, body
        pos += length


def _fingerprint(body):
    version = body[0]
    if version == 4:
        return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()
    if version == 6:
        return hashlib.sha256(b"\x9b" + len(body).to_bytes(4, "big") + body).hexdigest().upper()
    raise AnsibleFilterError("openpgp_fingerprints: public key version %d is not supported (v4 and v6 are)" % version)


def openpgp_fingerprints(content, errors="strict"):
    """Fingerprints of the primary keys in a key file (armoured text, binary or slurp base64).

    errors="ignore" returns [] for content that is not a key (a corrupt or foreign file that
    a role is about to replace) instead of failing.
    """
    if errors not in ("strict", "ignore"):
        raise AnsibleFilterError("openpgp_fingerprints: errors must be strict or ignore, got %r" % (errors,))
    try:
        data = _key_bytes(content)
        if not data:
            return []
        return [_fingerprint(body) for tag, body in _packets(data) if tag == PUBLIC_KEY]
    except (AnsibleFilterError, IndexError):
        if errors == "ignore":
            return []
        raise


def openpgp_fingerprint_normalize(value):
    """'0218 2E60 ...' -> '02182E60...'; empty stays empty."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AnsibleFilterError("openpgp_fingerprint_normalize: expected a string, got %r" % (value,))
    text = "".join(value.split()).upper()
    if text.startswith("0X"):
        text = text[2:]
    if text and not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", text):
        raise AnsibleFilterError(
            "openpgp_fingerprint_normalize: %r is not a 40 (v4) or 64 (v6) hex digit fingerprint" % value)
    return text


class FilterModule(object):
    def filters(self):
        return {
            "openpgp_fingerprints": openpgp_fingerprints,
            "openpgp_fingerprint_normalize": openpgp_fingerprint_normalize,
        }
