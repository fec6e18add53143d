"""plugins/filter/openpgp.py: fingerprints of apt repository keys without gpg on the host.

The fixtures in tests/unit/data/openpgp were made with GnuPG; the expected fingerprints are
the ones `gpg --show-keys --with-colons` printed for them (see the README there), so a wrong
hash, a wrong packet parser or a subkey listed as a primary key fails here.
"""

import base64
import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "filter"))

import openpgp  # noqa: E402

DATA = ROOT / "tests" / "unit" / "data" / "openpgp"
RSA = "0FCD13ADA81FD93165C57A8A7FDE4C968A74EFFA"
RSA_SUBKEY = "BB67B7C198D525FA438A4A9569294A2F39ED0348"
ED25519 = "EB1B853224C9CE09835DBFF5DA5B60F76910F8C3"


def b64(path):
    return base64.b64encode(path.read_bytes()).decode()


def new_format(binary):
    """Re-encode old-format packets as new-format ones (same bodies, same fingerprints)."""
    out, pos = b"", 0
    for tag, body in openpgp._packets(binary):
        if len(body) < 192:
            length = bytes([len(body)])
        elif len(body) < 8384:
            n = len(body) - 192
            length = bytes([(n >> 8) + 192, n & 0xFF])
        else:
            length = b"\xff" + len(body).to_bytes(4, "big")
        out += bytes([0xC0 | tag]) + length + body
        pos += 1
    assert pos > 0
    return out


@pytest.mark.parametrize("content,expected", [
    # armoured text as a template would see it (lookup('file') / a vars value)
    (lambda: (DATA / "rsa-with-subkey.asc").read_text(), [RSA]),
    # slurp of an armoured file (base64 of the armour)
    (lambda: b64(DATA / "rsa-with-subkey.asc"), [RSA]),
    # slurp of a binary ("dearmored") keyring, as Cloudflare serves cloudflare-main.gpg
    (lambda: b64(DATA / "ed25519.gpg"), [ED25519]),
    # two primary keys in one file, in file order
    (lambda: (DATA / "two-keys.asc").read_text(), [RSA, ED25519]),
    # the same key encoded with new-format packet headers
    (lambda: base64.b64encode(new_format((DATA / "ed25519.gpg").read_bytes())).decode(), [ED25519]),
    # the molecule stand-in placeholder: armour without any key
    (lambda: (ROOT / "tests" / "standins" / "nvidia" / "stand-in-repo-key.asc").read_text(), []),
], ids=["armoured-text", "armoured-slurp", "binary-slurp", "two-keys", "new-format-packets", "no-key"])
def test_fingerprints_of_primary_keys(content, expected):
    assert openpgp.openpgp_fingerprints(content()) == expected


def test_subkeys_are_not_primary_keys():
    assert RSA_SUBKEY not in openpgp.openpgp_fingerprints((DATA / "rsa-with-subkey.asc").read_text())


@pytest.mark.parametrize("bad", [
    "edge-standin-key (not Cloudflare's key; rendering test only)\n",   # molecule/edge's text file
    base64.b64encode(b"\x00\x01not a key").decode(),
    42,
])
def test_refuses_what_is_not_a_key(bad):
    with pytest.raises(AnsibleFilterError):
        openpgp.openpgp_fingerprints(bad)


@pytest.mark.parametrize("bad", [
    "edge-standin-key (not Cloudflare's key; rendering test only)\n",
    base64.b64encode(b"\x99\x01").decode(),   # truncated packet
])
def test_ignore_errors_gives_no_fingerprint(bad):
    assert openpgp.openpgp_fingerprints(bad, errors="ignore") == []


@pytest.mark.parametrize("value,expected", [
    ("0218 2E60 104F CDC2 6EAE  1B85 97A5 D4CB 8793 F200", "02182E60104FCDC26EAE1B8597A5D4CB8793F200"),
    ("eb693b3035cd5710e231e123a4b469963bf863cc", "EB693B3035CD5710E231E123A4B469963BF863CC"),
    ("0xCC94B39C77AE7342A68B89628A682D308D4E5E73", "CC94B39C77AE7342A68B89628A682D308D4E5E73"),
    ("", ""),
])
def test_fingerprint_normalize(value, expected):
    assert openpgp.openpgp_fingerprint_normalize(value) == expected


@pytest.mark.parametrize("value", ["8793F200", "not a fingerprint", "Z" * 40])
def test_fingerprint_normalize_refuses_short_ids_and_junk(value):
    with pytest.raises(AnsibleFilterError):
        openpgp.openpgp_fingerprint_normalize(value)
