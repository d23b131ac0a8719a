"""Ansible filter that writes a Mosquitto 2 password hash without running mosquitto_passwd.

mosquitto_passwd draws a new random salt on every call, so a task that runs it changes the
password file on every run. This filter takes the salt as an argument instead: the roles store
one random salt per user beside the password, which keeps the file byte-identical between runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from ansible.errors import AnsibleFilterError

# Mosquitto 2.0 reads "$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512 digest>".
HASH_FORMAT_ID = 7
SALT_BYTES = 12
# mosquitto_passwd's default. The roles generate 32-character random passwords, so the iteration
# count protects nothing that their entropy does not already protect, while every MQTT connect
# pays for it on the broker.
DEFAULT_ITERATIONS = 101


def mosquitto_password_hash(password: str, salt_base64: str, iterations: int = DEFAULT_ITERATIONS) -> str:
    """Hash a password for a Mosquitto 2 password file; the salt is 16 base64 characters (12 bytes)."""
    if not password:
        raise AnsibleFilterError("mosquitto_password_hash: the password is empty; generate one first")
    try:
        salt = base64.b64decode(salt_base64, validate=True)
    except (binascii.Error, ValueError):
        raise AnsibleFilterError(
            f"mosquitto_password_hash: salt {salt_base64!r} is not base64; use 16 letters or digits"
        ) from None
    if len(salt) != SALT_BYTES:
        raise AnsibleFilterError(
            f"mosquitto_password_hash: salt {salt_base64!r} decodes to {len(salt)} bytes, expected "
            f"{SALT_BYTES}; use 16 letters or digits"
        )
    if int(iterations) < 1:
        raise AnsibleFilterError(f"mosquitto_password_hash: iterations {iterations!r} must be at least 1")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, int(iterations))
    return (
        f"${HASH_FORMAT_ID}${int(iterations)}${base64.b64encode(salt).decode('ascii')}"
        f"${base64.b64encode(digest).decode('ascii')}"
    )


class FilterModule:
    def filters(self) -> dict:
        return {"mosquitto_password_hash": mosquitto_password_hash}
