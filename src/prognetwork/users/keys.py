"""Access-token signing keys: Ed25519, published as a JWKS, rotated through the secret.

The secret `JWT_SIGNING_KEYS` holds one or more PKCS#8 PEM private keys. The first signs;
every key in it is published and verifies, so rotating is: prepend a new key, wait one
access-token lifetime (plus JWKS cache time), then drop the old one. The key id is the
RFC 7638 thumbprint of the public key, so it needs no configuration. Because the secret is
read through the expiring secrets cache, a rotation needs no restart.

Verified access tokens are remembered (kit.jwks.VerifiedTokens: until the token's `exp`, bounded,
never accepting what the full check refuses), and forgotten whenever the keys change: a key
dropped from the secret stops vouching for its tokens at once. Revocation is checked after, on
every request (kit.revocation).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from prognetwork.kit import tokens
from prognetwork.kit.jwks import VerifiedTokens
from prognetwork.kit.secrets import MissingSecret
from prognetwork.kit.tokens import ALGORITHM, InvalidToken
from prognetwork.users.settings import UsersSettings

__all__ = ["KeyRing", "InvalidToken", "generate_pem", "load_key"]

SECRET_NAME = "JWT_SIGNING_KEYS"  # noqa: S105 - the secret's name, not its value
PEM_BLOCK = re.compile(r"-----BEGIN PRIVATE KEY-----.+?-----END PRIVATE KEY-----", re.S)


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    jwk: dict[str, str]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_key(pem: str) -> SigningKey:
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError("JWT signing keys must be Ed25519 (openssl genpkey -algorithm ed25519)")
    public = private.public_key()
    x = _b64(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    thumbprint = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    kid = _b64(hashlib.sha256(thumbprint.encode()).digest())
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": ALGORITHM, "use": "sig"}
    return SigningKey(kid, private, public, jwk)


def generate_pem() -> str:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem.decode()


def _development_key(state_dir: Path) -> str:
    """A key kept in the local state folder, so tokens survive restarts of `prog up`."""
    path = state_dir / "jwt-signing-key.pem"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(generate_pem())
        except FileExistsError:
            pass  # another process won the race; use its key
    return path.read_text()


class KeyRing:
    def __init__(self, settings: UsersSettings) -> None:
        self.settings = settings
        self._loaded_from: str | None = None
        self._keys: list[SigningKey] = []
        self._by_kid: dict[str, SigningKey] = {}
        self._development_text: str | None = None
        self._verified = VerifiedTokens()

    def _current(self) -> list[SigningKey]:
        secret = self.settings.secrets.get(SECRET_NAME)
        if secret is not None:
            text = secret.get_secret_value()
        elif self.settings.is_development:
            if self._development_text is None:  # read once: the file never changes under a process
                self._development_text = _development_key(self.settings.state_dir)
            text = self._development_text
        else:
            raise MissingSecret(SECRET_NAME)
        if text != self._loaded_from:
            keys = [load_key(block) for block in PEM_BLOCK.findall(text)]
            if not keys:
                raise ValueError(f"{SECRET_NAME} holds no PEM private key")
            self._keys, self._by_kid, self._loaded_from = keys, {k.kid: k for k in keys}, text
            self._verified.clear()  # what the old keys vouched for is checked anew
        return self._keys

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk for k in self._current()]}

    def sign(self, claims: dict[str, Any], ttl_seconds: int) -> str:
        key = self._current()[0]
        now = int(time.time())
        body = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode(body, key.private, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "at+jwt"})

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        key = self._by_kid.get(kid)
        return key.public if key else None

    def signing_key(self) -> SigningKey:
        """The key that signs now (the first in the secret); it also signs audit checkpoints."""
        return self._current()[0]

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """Every published key by id: what verifies tokens and audit checkpoints."""
        return {key.kid: key.public for key in self._current()}

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token (tokens.verify's rules), or InvalidToken. The claims may come
        from the cache: shared between requests, read-only."""
        self._current()  # picks up a rotated secret, and then forgets the tokens verified before
        now = time.time()
        claims = self._verified.get(token, now)
        if claims is None:
            claims = tokens.verify(
                token, self.public_key, self.settings.jwt_issuer, self.settings.jwt_audience
            )
            self._verified.put(token, claims, now)
        return claims
