"""Streaming, strict RFC 4180 reading with physical line numbers.

Layers, bottom to top:
  HashingReader   raw bytes: SHA-256 and size in the same pass, NUL bytes refused
  choose_encoding declared, or detected (BOM, UTF-8, CP932) from the first bytes, and recorded
  iter_records    CPython's C csv reader in strict mode over physical lines (CRLF, LF, lone CR),
                  yielding (first physical line, fields, raw text) per record

Python's csv module cannot tell `,,` from `,"",` and we must: an unquoted empty field is NULL,
a quoted one is the empty string. Only records that contain an empty (or null-marker) field
and a quote character are re-tokenized here to learn which fields were quoted.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
from typing import BinaryIO, Callable, Iterator

from .errors import DataError, RowError, shorten

UTF8_BOM = b"\xef\xbb\xbf"
DETECT_BYTES = 1 << 16
READ_CHUNK = 1 << 20
# A field longer than this is almost always an unterminated quote swallowing the file.
MAX_FIELD_CHARS = 1 << 20
csv.field_size_limit(MAX_FIELD_CHARS)

# shift_jis is read with Microsoft's superset: 0x8160 becomes U+FF5E (～), as Excel users expect.
CODEC_ALIASES = {"utf-8": "utf-8", "utf8": "utf-8", "utf-8-sig": "utf-8-sig", "cp932": "cp932",
                 "shift_jis": "cp932", "sjis": "cp932", "ms932": "cp932", "windows-31j": "cp932"}


class NulByteError(Exception):
    def __init__(self, offset: int):
        self.offset = offset
        super().__init__(f"NUL byte at offset {offset}")


class HashingReader(io.RawIOBase):
    """Wraps a binary stream; hashes and counts every byte read, and refuses NUL bytes."""

    def __init__(self, stream: BinaryIO, progress: Callable[[int], None] | None = None):
        self._stream = stream
        self._digest = hashlib.sha256()
        self.size = 0
        self._head = b""
        self._progress = progress
        self.eof = False

    def readable(self) -> bool:
        return True

    def _pull(self, n: int) -> bytes:
        data = self._stream.read(n)
        if not data:
            self.eof = True
            return b""
        nul = data.find(b"\x00")
        start = self.size
        self._digest.update(data)
        self.size += len(data)
        if nul != -1:
            raise NulByteError(start + nul)
        if self._progress:
            self._progress(self.size)
        return data

    def head(self, n: int = DETECT_BYTES) -> bytes:
        """Read (and keep for later) the first n bytes, for encoding detection."""
        while len(self._head) < n and not self.eof:
            self._head += self._pull(n - len(self._head))
        return self._head

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._pull(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read to the end so that sha256/size cover the whole file even after an early stop."""
        self._head = b""
        try:
            while self._pull(READ_CHUNK):
                pass
        except NulByteError:
            self.drain()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def normalize_codec(name: str) -> str:
    try:
        return CODEC_ALIASES[name.lower()]
    except KeyError:
        raise ValueError(f"unsupported encoding {name!r}; use one of {sorted(set(CODEC_ALIASES))}") from None


def _decodes(data: bytes, codec: str, final: bool) -> bool:
    try:
        codecs.getincrementaldecoder(codec)("strict").decode(data, final)
        return True
    except UnicodeDecodeError:
        return False


def choose_encoding(head: bytes, accepted: tuple[str, ...], declared: str | None, at_eof: bool) -> tuple[str, str]:
    """Return (codec, how) where how is 'declared', 'bom' or 'detected'. None fits -> ('', reason)."""
    if declared:
        codec = normalize_codec(declared)
        if codec == "utf-8" and head.startswith(UTF8_BOM):
            codec = "utf-8-sig"  # a declared UTF-8 file may still carry a BOM; never keep it in a name
        return codec, "declared"
    accepted_codecs = [normalize_codec(a) for a in accepted]
    utf8_ok = any(c in ("utf-8", "utf-8-sig") for c in accepted_codecs)
    if head.startswith(UTF8_BOM) and utf8_ok:
        return "utf-8-sig", "bom"
    if len(set(accepted_codecs) - {"utf-8-sig"}) == 1 and not utf8_ok:
        return accepted_codecs[0], "declared"
    if utf8_ok and _decodes(head, "utf-8", at_eof):
        return "utf-8", "detected"
    for codec in accepted_codecs:
        if codec not in ("utf-8", "utf-8-sig") and _decodes(head, codec, at_eof):
            return codec, "detected"
    # Nothing decodes cleanly: read with the first accepted codec so the error names the exact offset.
    return accepted_codecs[0], "assumed"


def locate_offset(data_stream: BinaryIO, offset: int, delimiter: str, codec: str) -> tuple[int, int]:
    """Physical line (1-based) and field index (0-based) of a byte offset. Error path only."""
    line = 1
    consumed = 0
    line_start = b""
    last_byte = b""
    while consumed < offset:
        chunk = data_stream.read(min(READ_CHUNK, offset - consumed))
        if not chunk:
            break
        crossing_crlf = 1 if last_byte == b"\r" and chunk[:1] == b"\n" else 0
        line += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n") - crossing_crlf
        cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        line_start = chunk[cut + 1:] if cut >= 0 else line_start + chunk
        last_byte = chunk[-1:]
        consumed += len(chunk)
    prefix = line_start.decode(codec, errors="replace") if codec else line_start.decode("latin-1")
    in_quotes = False
    field = 0
    for ch in prefix:
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == delimiter and not in_quotes:
            field += 1
    return line, field


def locate_decode_error(open_source: Callable[[], BinaryIO], codec: str) -> tuple[int, str]:
    """Exact byte offset of the first undecodable byte sequence, and the codec's reason."""
    decoder = codecs.getincrementaldecoder(codec)("strict")
    consumed = 0
    with open_source() as stream:
        while True:
            chunk = stream.read(READ_CHUNK)
            final = not chunk
            try:
                decoder.decode(chunk, final)
            except UnicodeDecodeError as exc:
                # exc.object is the decoder's pending bytes followed by this chunk: a suffix of what was read.
                return consumed + len(chunk) - len(exc.object) + exc.start, exc.reason
            consumed += len(chunk)
            if final:
                return -1, ""


class _QuoteError(Exception):
    def __init__(self, field_index: int, pos: int, message: str):
        self.field_index, self.pos, self.message = field_index, pos, message


def tokenize_quoting(raw: str, delimiter: str) -> list[bool]:
    """Which fields of one raw record were quoted. Mirrors csv's strict-mode rules exactly."""
    flags: list[bool] = []
    i, n = 0, len(raw)
    while True:
        field_start = i
        if i < n and raw[i] == '"':
            flags.append(True)
            i += 1
            while True:
                j = raw.find('"', i)
                if j == -1:
                    raise _QuoteError(len(flags) - 1, field_start,
                                      "quoted field is never closed (end of file reached inside quotes)")
                if j + 1 < n and raw[j + 1] == '"':
                    i = j + 2
                    continue
                i = j + 1
                break
            if i < n and raw[i] not in (delimiter, "\r", "\n"):
                raise _QuoteError(len(flags) - 1, i,
                                  f"unexpected {raw[i]!r} after a closing quote; a quote inside a quoted field must be doubled (\"\")")
        else:
            flags.append(False)
            while i < n and raw[i] not in (delimiter, "\r", "\n"):
                i += 1
        if i < n and raw[i] == delimiter:
            i += 1
            continue
        return flags


def iter_records(text: Iterator[str], delimiter: str, file_label: str) -> Iterator[tuple[int, list[str], str]]:
    """Yield (first physical line, fields, raw record text). Blank lines yield an empty field list."""
    pending: list[str] = []

    def physical_lines() -> Iterator[str]:
        for line in text:
            pending.append(line)
            yield line

    reader = csv.reader(physical_lines(), delimiter=delimiter, quotechar='"', doublequote=True,
                        strict=True, skipinitialspace=False)
    last_line = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raw = "".join(pending)
            start = last_line + 1
            raise DataError([_structural_error(file_label, raw, start, delimiter, str(exc))]) from None
        start = last_line + 1
        last_line = reader.line_num
        raw = pending[0] if len(pending) == 1 else "".join(pending)
        pending.clear()
        yield start, fields, raw


def _structural_error(file_label: str, raw: str, start_line: int, delimiter: str, csv_message: str) -> RowError:
    try:
        tokenize_quoting(raw, delimiter)
    except _QuoteError as qe:
        line = start_line + _count_line_breaks(raw[: qe.pos])
        return RowError(file=file_label, line=line, column=f"#{qe.field_index + 1}", message=qe.message,
                        kind="malformed_csv", value=shorten(raw.rstrip("\r\n")))
    if "field larger than field limit" in csv_message:
        message = (f"a field is longer than {MAX_FIELD_CHARS} characters; usually a quote that is never "
                   "closed")
    else:
        message = f"malformed CSV: {csv_message}"
    return RowError(file=file_label, line=start_line, column=None, message=message, kind="malformed_csv",
                    value=shorten(raw.rstrip("\r\n")))


def _count_line_breaks(text: str) -> int:
    return text.count("\r\n") + (text.count("\r") - text.count("\r\n")) + (text.count("\n") - text.count("\r\n"))
