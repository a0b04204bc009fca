#!/usr/bin/env python3
"""The one place that names a connection's pipeline-credential secret in Key Vault.

infra/deploy.sh stores each pipeline credential's secret under this name (and grants Data Factory
Key Vault Secrets User on exactly that secret), and renders the same name into the Data Factory
assets (dist/adf); tests/check_infra.py checks the properties below.

Key Vault object names match ^[0-9a-zA-Z-]{1,127}$ and are case-insensitive
(learn.microsoft.com/azure/key-vault/general/about-keys-secrets-certificates, "Object identifiers").
Integration names are [a-z0-9-]{1,63} and connection ids [A-Za-z0-9._-]{1,128}, case-sensitive
(src/domain/ids.rs), so a plain character substitution would collide ("a.b", "a_b" and "a-b"; "Acme"
and "acme"; integration "a-b" with connection "c" and integration "a" with connection "b-c") and could
exceed 127 characters. The name is therefore a readable prefix plus a hash of the exact pair:

    broker-cred-<integration>-<connection, lowercased, other characters as '-'>[:truncated]-<16 hex>

where the 16 hex digits are the first 64 bits of SHA-256("<integration>/<connection>") — "/" is in
neither alphabet, so the pair is unambiguous. Usage:

    python3 infra/names.py credential-secret <integration> <connection>
"""

import hashlib
import re
import sys

PREFIX = "broker-cred-"
MAX = 127
HASH_HEX = 16
INTEGRATION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
CONNECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
KEY_VAULT_NAME = re.compile(r"[0-9a-zA-Z-]{1,127}")


def credential_secret_name(integration: str, connection: str) -> str:
    if not INTEGRATION.fullmatch(integration):
        raise ValueError(f"not an integration name: {integration!r} (a-z, 0-9 and '-', 1 to 63 characters)")
    if not CONNECTION.fullmatch(connection):
        raise ValueError(f"not a connection id: {connection!r} (A-Z, a-z, 0-9, '.', '_' and '-', 1 to 128 characters)")
    digest = hashlib.sha256(f"{integration}/{connection}".encode("ascii")).hexdigest()[:HASH_HEX]
    readable = re.sub(r"[^a-z0-9-]", "-", f"{integration}-{connection}".lower())
    head = (PREFIX + readable)[: MAX - HASH_HEX - 1]
    return f"{head}-{digest}"


def main(argv):
    if len(argv) == 3 and argv[0] == "credential-secret":
        try:
            print(credential_secret_name(argv[1], argv[2]))
        except ValueError as e:
            sys.exit(f"infra/names.py: {e}")
        return 0
    sys.exit("usage: infra/names.py credential-secret <integration> <connection>")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
