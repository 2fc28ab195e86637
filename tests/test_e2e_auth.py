"""
End to end: the users file and the throttle of a running gateway, changed
from outside with the admin commands, without a restart.
"""

from __future__ import annotations

import imaplib
import io
import signal
import ssl
import time

from twisted.trial.unittest import SynchronousTestCase

from gateway.auth import usercli
from tests.gatewayprocess import GatewayProcess, add_account


def imaps_login(gw: GatewayProcess, user: str, password: str) -> str:
    """Log in over IMAPS; the tagged answer's first word (OK/NO/...)."""
    ctx = ssl.create_default_context(cafile=str(gw.certs.ca_certificate))
    c = imaplib.IMAP4_SSL("127.0.0.1", gw.ports["imaps"], ssl_context=ctx, timeout=20)
    try:
        c.login(user, password)
        return "OK"
    except imaplib.IMAP4.error as e:
        return str(e)
    finally:
        try:
            c.logout()
        except Exception:
            pass


def eventually(check, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    result = check()
    while not result and time.monotonic() < deadline:
        time.sleep(0.2)
        result = check()
    return result


class UsersFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gw = GatewayProcess()
        self.addCleanup(self.gw.stop)
        self.gw.start()

    def test_account_added_while_running(self) -> None:
        self.assertIn("AUTHENTICATIONFAILED", imaps_login(self.gw, "carol@example.test", "carol-pw-3"))
        add_account(self.gw.users, "carol@example.test", "carol-pw-3")
        self.assertTrue(eventually(lambda: imaps_login(self.gw, "carol", "carol-pw-3") == "OK"))

    def test_password_change_seen_after_sighup(self) -> None:
        self.assertEqual(imaps_login(self.gw, "bob@example.test", "bob-password-2"), "OK")
        out, err = io.StringIO(), io.StringIO()
        status = usercli.main(["user", "passwd", "bob@example.test", "--users", str(self.gw.users),
                               "--password-stdin"], out, err, stdin=io.StringIO("new-bob-pw\n"))
        self.assertEqual(status, 0, err.getvalue())
        self.gw.signal(signal.SIGHUP)
        self.assertTrue(eventually(lambda: imaps_login(self.gw, "bob", "new-bob-pw") == "OK"))
        self.assertIn("AUTHENTICATIONFAILED", imaps_login(self.gw, "bob", "bob-password-2"))

    def test_users_file_holds_no_password(self) -> None:
        text = self.gw.users.read_text()
        self.assertNotIn("bob-password-2", text)
        self.assertNotIn("alice-password-1", text.replace('"secret": "alice-password-1"', ""))
        self.assertEqual(self.gw.users.stat().st_mode & 0o777, 0o600)


class BanTests(SynchronousTestCase):
    def test_ban_and_unban(self) -> None:
        gw = GatewayProcess(
            trusted="[]",
            extra="[auth.throttle]\nfree_failures = 1\ndelay_base = 0.01\ndelay_cap = 0.02\n"
                  "pair_ban_after = 3\naddress_ban_after = 50\n",
        )
        self.addCleanup(gw.stop)
        gw.start()
        for i in range(4):
            imaps_login(gw, "bob@example.test", f"guess-{i}")
        answer = imaps_login(gw, "bob@example.test", "bob-password-2")
        self.assertIn("UNAVAILABLE", answer)
        # Another account from the same address is not locked out.
        self.assertEqual(imaps_login(gw, "alice@example.test", "alice-password-1"), "OK")
        # The gateway writes its bans to the state directory every 2 seconds.
        bans = gw.dir / "state" / "auth-bans.json"
        self.assertTrue(eventually(lambda: bans.exists() and "127.0.0.1" in bans.read_text()))
        out, err = io.StringIO(), io.StringIO()
        status = usercli.main(["auth", "unban", "127.0.0.1", "--state-dir", str(gw.dir / "state")],
                              out, err)
        self.assertEqual(status, 0, err.getvalue())
        self.assertTrue(eventually(lambda: imaps_login(gw, "bob@example.test", "bob-password-2") == "OK"))
