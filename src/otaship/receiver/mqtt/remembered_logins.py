"""The embedded broker's memory of logins that worked, for a database outage.

Owners' MQTT credentials live in the database. While it cannot be reached, a
device that reconnects (after a Wi-Fi drop, a reboot, the receiver's own
broker link flapping) would be refused, and its reports lost, though its
password worked a minute ago. So the broker keeps, for each user name, the
last password that logged it in, as a keyed hash (the key is made per process
and never leaves it), and accepts exactly that one while the database fails.
Nobody who never logged in gets in, and a wrong password is still refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict

# Far more owners than one receiver serves; the least recently seen go first.
MAX_USERS = 100_000


class RememberedLogins:
    def __init__(self, max_users: int = MAX_USERS) -> None:
        self.max_users = max_users
        self._key = secrets.token_bytes(32)
        self._digests: OrderedDict[str, bytes] = OrderedDict()

    def _digest(self, username: str, password: str) -> bytes:
        # MQTT strings are UTF-8; a client can still send lone surrogates.
        material = f"{len(username)}:{username}:{password}".encode("utf-8", "surrogatepass")
        return hmac.new(self._key, material, hashlib.sha256).digest()

    def learn(self, username: str, password: str) -> None:
        """The database accepted this login: remember it, in place of any earlier password."""
        self._digests[username] = self._digest(username, password)
        self._digests.move_to_end(username)
        while len(self._digests) > self.max_users:
            self._digests.popitem(last=False)

    def recall(self, username: str, password: str) -> bool:
        """Whether this is the last password that logged `username` in."""
        known = self._digests.get(username)
        return known is not None and hmac.compare_digest(known, self._digest(username, password))
