"""The broker's memory of logins that worked: exactly the last password, per user."""

from __future__ import annotations

from otaship.receiver.mqtt.remembered_logins import RememberedLogins


def test_the_last_password_that_worked_is_recalled_and_no_other() -> None:
    logins = RememberedLogins()
    assert not logins.recall("alice", "secret")
    logins.learn("alice", "secret")
    assert logins.recall("alice", "secret")
    assert not logins.recall("alice", "secret2")
    assert not logins.recall("bob", "secret")
    # The user name and password are not just joined: "a" + "b:c" is not "a:b" + "c".
    logins.learn("a", "b:c")
    assert not logins.recall("a:b", "c")
    # A new password that worked replaces the old one.
    logins.learn("alice", "rotated")
    assert logins.recall("alice", "rotated")
    assert not logins.recall("alice", "secret")
    # Any string an MQTT client can send, lone surrogates included.
    logins.learn("dev\udcff", "p\ud800")
    assert logins.recall("dev\udcff", "p\ud800")


def test_the_least_recently_seen_users_go_first() -> None:
    logins = RememberedLogins(max_users=2)
    logins.learn("a", "1")
    logins.learn("b", "2")
    logins.learn("a", "1")  # seen again: now the most recent
    logins.learn("c", "3")
    assert (logins.recall("a", "1"), logins.recall("b", "2"), logins.recall("c", "3")) == (True, False, True)


def test_no_password_is_kept_in_clear() -> None:
    logins = RememberedLogins()
    logins.learn("alice", "hunter2-secret")
    assert "hunter2-secret" not in repr(vars(logins))
    # Keyed per process: another memory given the same login holds another digest.
    other = RememberedLogins()
    other.learn("alice", "hunter2-secret")
    assert logins._digests["alice"] != other._digests["alice"]
