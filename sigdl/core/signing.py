"""Ed25519 signatures of edge packages: the deploy side signs `manifest.json`, the agent checks.

The manifest names the sha256 of every file of a package, so one signature over its exact
bytes covers the whole package. The signature travels beside it as `signature`, a small JSON
document::

    {"algorithm": "ed25519", "key_id": "3f1c...", "signed": "manifest.json",
     "signature": "<base64 of the 64-byte signature>"}

`key_id` (the first 16 hex digits of the sha256 of the raw public key) only names the key in
error messages and status reports; trust comes from the public key the verifier holds, never
from the document. Keys are PEM files named by settings (SIGDL_SIGNING_KEY for the publisher,
SIGDL_VERIFY_KEY for agents), never stored in a package or an image::

    private, public = generate_keys(Path("keys"))      # `sigdl keys generate --out keys`
    doc = sign(manifest_bytes, load_private_key(private))
    verify(manifest_bytes, doc, load_public_key(public))  # raises SignatureError
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sigdl.core import atomic
from sigdl.core.errors import InputError

ALGORITHM = "ed25519"
SIGNATURE = "signature"  # the file name beside manifest.json in a package
SIGNED = "manifest.json"  # what the signature covers
PRIVATE_KEY = "signing.key"  # names `generate_keys` writes
PUBLIC_KEY = "signing.pub"
MAX_SIGNATURE_BYTES = 4096  # a signature document is ~200 bytes; anything bigger is not one


class SignatureError(InputError):
    """A signature that is missing, malformed, made by another key, or does not match."""


def generate_keys(out_dir: Path) -> tuple[Path, Path]:
    """Write a new key pair into `out_dir` (the private key readable by its owner only);
    refuse to overwrite an existing one: replacing a key silently strands every agent."""
    private_path, public_path = out_dir / PRIVATE_KEY, out_dir / PUBLIC_KEY
    for path in (private_path, public_path):
        if path.exists():
            raise InputError(
                f"{str(path)!r} exists: keys are never overwritten; pick another --out"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    atomic.write_bytes(public_path, public_pem)
    return private_path, public_path


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} {str(path)!r} does not exist") from None
    except OSError as exc:
        raise InputError(f"{what} {str(path)!r} cannot be read: {exc.strerror}") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = _read_key_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InputError(
            f"signing key {str(path)!r} is not an unencrypted PEM private key "
            "(make one with `sigdl keys generate`)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"signing key {str(path)!r} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = _read_key_file(path, "verify key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise InputError(
            f"verify key {str(path)!r} is not a PEM public key (the signing.pub of "
            "`sigdl keys generate`)"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"verify key {str(path)!r} is not an Ed25519 key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(manifest: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The signature document of these exact manifest bytes."""
    doc = {
        "algorithm": ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "signed": SIGNED,
        "signature": base64.b64encode(private_key.sign(manifest)).decode(),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def verify(manifest: bytes, signature_doc: bytes, public_key: Ed25519PublicKey) -> str:
    """Check `signature_doc` over `manifest` with the trusted key; return the key id."""
    trusted = key_id(public_key)
    if len(signature_doc) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"the signature is {len(signature_doc)} bytes: not a signature")
    try:
        doc = json.loads(signature_doc)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SignatureError("the signature is not a JSON signature document") from None
    if not isinstance(doc, dict) or doc.get("algorithm") != ALGORITHM:
        raise SignatureError(f"the signature is not an {ALGORITHM} signature document")
    try:
        raw = base64.b64decode(str(doc.get("signature", "")), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the signature's value is not base64") from None
    try:
        public_key.verify(raw, manifest)
    except InvalidSignature:
        claimed = doc.get("key_id")
        if isinstance(claimed, str) and claimed != trusted:
            raise SignatureError(
                f"manifest.json is signed by key {claimed[:16]!r}, not the trusted key {trusted!r}"
            ) from None
        raise SignatureError(
            f"the signature does not match manifest.json under the trusted key {trusted!r}"
        ) from None
    return trusted
