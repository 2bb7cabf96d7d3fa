"""Keys and secrets: master keys, envelope encryption at rest, JWS signing keys.

Depends only on the standard library and ``cryptography``. See docs/keyvault.md.
"""

from keyvault.envelope import Envelope
from keyvault.errors import (
    DecryptionError,
    KeyFileError,
    KeyvaultError,
    MasterKeyError,
    SigningKeyError,
    TokenExpired,
    TokenInvalid,
    TokenNotYetValid,
    UnknownKeyError,
)
from keyvault.masterkey import (
    ENV_MASTER_KEY,
    ENV_MASTER_KEY_PREVIOUS,
    MasterKey,
    MasterKeyring,
    create_master_key_file,
    generate_master_key,
    load_master_keyring,
    master_key_path,
    remove_master_key,
    rotate_master_key,
)
from keyvault.secrets import SecretStore
from keyvault.signing import ALGORITHMS, KeyState, SigningKeyInfo, SigningKeyring
from keyvault.suites import AES_GCM, GM_SM4_GCM, CipherSuite, get_suite
from keyvault.vault import Keyvault, init_keyvault, open_keyvault

__all__ = [
    "AES_GCM",
    "ALGORITHMS",
    "ENV_MASTER_KEY",
    "ENV_MASTER_KEY_PREVIOUS",
    "GM_SM4_GCM",
    "CipherSuite",
    "DecryptionError",
    "Envelope",
    "KeyFileError",
    "KeyState",
    "Keyvault",
    "KeyvaultError",
    "MasterKey",
    "MasterKeyError",
    "MasterKeyring",
    "SecretStore",
    "SigningKeyError",
    "SigningKeyInfo",
    "SigningKeyring",
    "TokenExpired",
    "TokenInvalid",
    "TokenNotYetValid",
    "UnknownKeyError",
    "create_master_key_file",
    "generate_master_key",
    "get_suite",
    "init_keyvault",
    "load_master_keyring",
    "master_key_path",
    "open_keyvault",
    "remove_master_key",
    "rotate_master_key",
]
