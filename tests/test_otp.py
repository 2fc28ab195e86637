"""
Tests for L{gateway.auth.otp} and L{gateway.auth.otpwords}: RFC 2289
one-time passwords and RFC 2243 extended responses.
"""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth import otp
from gateway.auth.otpwords import INDEX, WORDS

# RFC 2289 appendix C, every MD5 and SHA-1 vector:
# (algorithm, pass phrase, seed, count, hex, six words).
GOOD = "OTP's are good"
VECTORS = [
    ("md5", "This is a test.", "TeSt", 0, "9E87 6134 D904 99DD", "INCH SEA ANNE LONG AHEM TOUR"),
    ("md5", "This is a test.", "TeSt", 1, "7965 E054 36F5 029F", "EASE OIL FUM CURE AWRY AVIS"),
    ("md5", "This is a test.", "TeSt", 99, "50FE 1962 C496 5880", "BAIL TUFT BITS GANG CHEF THY"),
    ("md5", "AbCdEfGhIjK", "alpha1", 0, "8706 6DD9 644B F206", "FULL PEW DOWN ONCE MORT ARC"),
    ("md5", "AbCdEfGhIjK", "alpha1", 1, "7CD3 4C10 40AD D14B", "FACT HOOF AT FIST SITE KENT"),
    ("md5", "AbCdEfGhIjK", "alpha1", 99, "5AA3 7A81 F212 146C", "BODE HOP JAKE STOW JUT RAP"),
    ("md5", GOOD, "correct", 0, "F205 7539 43DE 4CF9", "ULAN NEW ARMY FUSE SUIT EYED"),
    ("md5", GOOD, "correct", 1, "DDCD AC95 6F23 4937", "SKIM CULT LOB SLAM POE HOWL"),
    ("md5", GOOD, "correct", 99, "B203 E28F A525 BE47", "LONG IVY JULY AJAR BOND LEE"),
    ("sha1", "This is a test.", "TeSt", 0, "BB9E 6AE1 979D 8FF4", "MILT VARY MAST OK SEES WENT"),
    ("sha1", "This is a test.", "TeSt", 1, "63D9 3663 9734 385B", "CART OTTO HIVE ODE VAT NUT"),
    ("sha1", "This is a test.", "TeSt", 99, "87FE C776 8B73 CCF9", "GAFF WAIT SKID GIG SKY EYED"),
    ("sha1", "AbCdEfGhIjK", "alpha1", 0, "AD85 F658 EBE3 83C9", "LEST OR HEEL SCOT ROB SUIT"),
    ("sha1", "AbCdEfGhIjK", "alpha1", 1, "D07C E229 B5CF 119B", "RITE TAKE GELD COST TUNE RECK"),
    ("sha1", "AbCdEfGhIjK", "alpha1", 99, "27BC 7103 5AAF 3DC6", "MAY STAR TIN LYON VEDA STAN"),
    ("sha1", GOOD, "correct", 0, "D51F 3E99 BF8E 6F0B", "RUST WELT KICK FELL TAIL FRAU"),
    ("sha1", GOOD, "correct", 1, "82AE B52D 9437 74E4", "FLIT DOSE ALSO MEW DRUM DEFY"),
    ("sha1", GOOD, "correct", 99, "4F29 6A74 FE15 67EC", "AURA ALOE HURL WING BERG WAIT"),
]

keys = st.binary(min_size=8, max_size=8)


class DictionaryTests(SynchronousTestCase):
    def test_size_and_uniqueness(self) -> None:
        """2048 distinct words, so that each stands for 11 bits."""
        self.assertEqual(len(WORDS), 2048)
        self.assertEqual(len(set(WORDS)), 2048)
        self.assertEqual(len(INDEX), 2048)

    def test_shape(self) -> None:
        """Upper-case words of 1 to 3 letters (571, sorted), then of 4 (sorted)."""
        for word in WORDS:
            self.assertTrue(word.isascii() and word.isalpha() and word.isupper(), word)
        self.assertTrue(all(1 <= len(w) <= 3 for w in WORDS[:571]))
        self.assertTrue(all(len(w) == 4 for w in WORDS[571:]))
        self.assertEqual(list(WORDS[:571]), sorted(WORDS[:571]))
        self.assertEqual(list(WORDS[571:]), sorted(WORDS[571:]))
        self.assertEqual(
            (WORDS[0], WORDS[570], WORDS[571], WORDS[2047]), ("A", "YOU", "ABED", "YOKE")
        )

    def test_fingerprint(self) -> None:
        """
        The list as checked against two independent copies of appendix D; the
        digest catches a later accidental edit.
        """
        digest = hashlib.sha256(" ".join(WORDS).encode("ascii")).hexdigest()
        self.assertEqual(
            digest, "46d3275be21196944429f7ce3ef95e4368fca4ba0dc9f35d01e96350f72e5549"
        )


class VectorTests(SynchronousTestCase):
    def test_count(self) -> None:
        """All nine vectors of each algorithm are here."""
        self.assertEqual(sum(1 for v in VECTORS if v[0] == "md5"), 9)
        self.assertEqual(sum(1 for v in VECTORS if v[0] == "sha1"), 9)

    def test_otp(self) -> None:
        for algorithm, passphrase, seed, count, hex_form, _ in VECTORS:
            with self.subTest(algorithm=algorithm, seed=seed, count=count):
                key = otp.otp(algorithm, passphrase, seed, count)
                self.assertEqual(key, bytes.fromhex(hex_form.replace(" ", "")))

    def test_to_words(self) -> None:
        for algorithm, _, seed, count, hex_form, words in VECTORS:
            with self.subTest(algorithm=algorithm, seed=seed, count=count):
                self.assertEqual(otp.to_words(otp.parse_hex(hex_form)), words)

    def test_from_words(self) -> None:
        for algorithm, _, seed, count, hex_form, words in VECTORS:
            with self.subTest(algorithm=algorithm, seed=seed, count=count):
                expected = otp.parse_hex(hex_form)
                self.assertEqual(otp.from_words(words), expected)
                self.assertEqual(otp.from_words(words.lower()), expected)

    def test_step(self) -> None:
        """One more hash of the OTP for count 0 is the OTP for count 1."""
        for algorithm, passphrase, seed, count, hex_form, _ in VECTORS:
            if count == 0:
                with self.subTest(algorithm=algorithm, seed=seed):
                    following = otp.otp(algorithm, passphrase, seed, 1)
                    self.assertEqual(otp.step(algorithm, otp.parse_hex(hex_form)), following)

    def test_bytes_passphrase(self) -> None:
        self.assertEqual(
            otp.otp("md5", b"This is a test.", "TeSt", 0), otp.parse_hex("9E876134D90499DD")
        )

    def test_rfc2243_example(self) -> None:
        """RFC 2243's re-initialisation example: challenge otp-md5 499 ke1234."""
        passphrase = "This is a test."
        self.assertEqual(otp.otp("md5", passphrase, "ke1234", 499).hex(), "5bf075d9959d036f")
        self.assertEqual(otp.otp("md5", passphrase, "ke1235", 499).hex(), "3712dcb4aa5316c1")
        self.assertEqual(
            otp.to_words(otp.otp("md5", "This is a test.", "ke1234", 499)),
            "BOND FOGY DRAB NE RISE MART",
        )

    def test_refusals(self) -> None:
        self.assertRaises(ValueError, otp.otp, "md4", "This is a test.", "TeSt", 0)
        self.assertRaises(ValueError, otp.otp, "md5", "too short", "TeSt", 0)
        self.assertRaises(ValueError, otp.otp, "md5", "This is a test.", "TeSt", -1)
        self.assertRaises(ValueError, otp.otp, "md5", "This is a test.", "Te St", 0)
        self.assertRaises(ValueError, otp.step, "md5", b"short")
        self.assertRaises(ValueError, otp.step, "sha256", b"12345678")


class FormatTests(SynchronousTestCase):
    def test_checksum_failure(self) -> None:
        """A word changed by one bit breaks the 2-bit checksum."""
        words = "INCH SEA ANNE LONG AHEM TOUR".split()
        # TOUR carries the last 9 key bits and the 2 checksum bits; change
        # its lowest bit (a checksum bit).
        words[5] = WORDS[INDEX["TOUR"] ^ 1]
        with self.assertRaises(ValueError) as caught:
            otp.from_words(" ".join(words))
        self.assertIn("checksum", str(caught.exception))

    def test_word_errors(self) -> None:
        for bad in [
            "INCH SEA ANNE LONG AHEM",  # five words
            "INCH SEA ANNE LONG AHEM TOUR TOUR",  # seven
            "INCH SEA ANNE LONG AHEM TOURS",  # not in the dictionary
            "INCH SEA ANNE LONG AHEM TÖUR",  # not ASCII
            "",
        ]:
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, otp.from_words, bad)

    def test_words_whitespace(self) -> None:
        self.assertEqual(
            otp.from_words("  inch\tSea anne\nLONG ahem   tour "),
            otp.parse_hex("9e876134d90499dd"),
        )

    def test_parse_hex(self) -> None:
        expected = bytes.fromhex("9e876134d90499dd")
        for good in ["9E876134D90499DD", "9e87 6134 d904 99dd", " 9 E87613 4D9049 9DD\t"]:
            with self.subTest(good=good):
                self.assertEqual(otp.parse_hex(good), expected)

    def test_bad_hex(self) -> None:
        for bad in [
            "9E876134D90499D",
            "9E876134D90499DDA",
            "9E876134D90499DG",
            "0x9E876134D90499D",
            "",
        ]:
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, otp.parse_hex, bad)

    def test_to_hex(self) -> None:
        self.assertEqual(otp.to_hex(bytes.fromhex("9E876134D90499DD")), "9e876134d90499dd")
        self.assertRaises(ValueError, otp.to_hex, b"1234567")
        self.assertRaises(ValueError, otp.to_words, b"123456789")

    @given(keys)
    def test_words_round_trip(self, key: bytes) -> None:
        words = otp.to_words(key)
        self.assertEqual(len(words.split()), 6)
        self.assertEqual(otp.from_words(words), key)

    @given(keys)
    def test_hex_round_trip(self, key: bytes) -> None:
        self.assertEqual(otp.parse_hex(otp.to_hex(key)), key)


class SeedTests(SynchronousTestCase):
    def test_valid(self) -> None:
        self.assertEqual(otp.validate_seed("TeSt"), "test")
        self.assertEqual(otp.validate_seed("a"), "a")
        self.assertEqual(otp.validate_seed("A" * 16), "a" * 16)
        self.assertEqual(otp.validate_seed("ke1234"), "ke1234")

    def test_invalid(self) -> None:
        for bad in ["", "A" * 17, "a seed", "seed!", "s\u00e9ed", "\uff11", "ke_12"]:
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, otp.validate_seed, bad)

    def test_case_insensitive(self) -> None:
        """RFC 2289: the seed is hashed in lower case."""
        self.assertEqual(
            otp.otp("sha1", "This is a test.", "TEST", 0),
            otp.otp("sha1", "This is a test.", "test", 0),
        )

    def test_challenge(self) -> None:
        self.assertEqual(otp.challenge("md5", 498, "KE1234"), "otp-md5 498 ke1234 ext")
        self.assertRaises(ValueError, otp.challenge, "md4", 498, "ke1234")


class ResponseTests(SynchronousTestCase):
    KEY = bytes.fromhex("5bf075d9959d036f")

    def test_typed(self) -> None:
        for text in [
            "hex:5bf075d9959d036f",
            "HEX:5BF0 75D9 959D 036F",
            "word:BOND FOGY DRAB NE RISE MART",
            "Word:bond fogy drab ne rise mart\r\n",
        ]:
            with self.subTest(text=text):
                self.assertEqual(otp.parse_response(text), otp.Response((self.KEY,)))

    def test_bare(self) -> None:
        self.assertEqual(otp.parse_response("5bf075d9959d036f").candidates, (self.KEY,))
        self.assertEqual(otp.parse_response("BOND FOGY DRAB NE RISE MART").candidates, (self.KEY,))

    def test_init(self) -> None:
        """RFC 2243 section 3's examples."""
        new = otp.NewParameters("md5", 499, "ke1235", bytes.fromhex("3712dcb4aa5316c1"))
        parsed = otp.parse_response("init-hex:5bf075d9959d036f:md5 499 ke1235:3712dcb4aa5316c1")
        self.assertEqual(parsed, otp.Response((self.KEY,), new))
        parsed = otp.parse_response(
            "init-word:BOND FOGY DRAB NE RISE MART:md5 499 ke1235:RED HERD NOW BEAN PA BURG"
        )
        self.assertEqual(parsed, otp.Response((self.KEY,), new))

    def test_malformed(self) -> None:
        for bad in [
            "",
            "hex:",
            "hex:5bf075d9959d036f:x",
            "word:BOND FOGY DRAB NE RISE",
            "hex:BOND FOGY DRAB NE RISE MART",
            "foo:5bf075d9959d036f",
            "init-hex:5bf075d9959d036f:md5 499 ke1235",
            "init-hex:5bf075d9959d036f:md4 499 ke1235:3712dcb4aa5316c1",
            "init-hex:5bf075d9959d036f:md5 0 ke1235:3712dcb4aa5316c1",
            "init-hex:5bf075d9959d036f:md5 10000 ke1235:3712dcb4aa5316c1",
            "init-hex:5bf075d9959d036f:md5 499 ke_1235:3712dcb4aa5316c1",
            "init-hex:5bf075d9959d036f:md5 499:3712dcb4aa5316c1",
            "init-word:5bf075d9959d036f:md5 499 ke1235:3712dcb4aa5316c1",
            "hex:5bf075d9\x00959d036f",
            "hex:5bf075d9959d036f\u00e9",
        ]:
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, otp.parse_response, bad)

    @given(st.text(max_size=120))
    def test_parser_raises_only_value_error(self, text: str) -> None:
        try:
            parsed = otp.parse_response(text)
        except ValueError:
            return
        self.assertTrue(parsed.candidates)
        self.assertTrue(all(len(key) == 8 for key in parsed.candidates))
