"""COMPRESS=DEFLATE (RFC 4978): raw DEFLATE both ways, for phones on slow links; a session mixin.

After the tagged OK of `COMPRESS DEFLATE` every byte the server writes is deflated, and every byte
the client sends after its command line is inflated, on top of TLS when TLS is in use (compress,
then encrypt: RFC 4978 6). Two small pieces do it without touching the rest of the session:
- writes: the session's `transport` is replaced by DeflatingTransport, which deflates each write
  and flushes it (Z_SYNC_FLUSH), so the client can read every reply at once, and hands everything
  else (producers, loseConnection, pauseProducing, ...) to the real transport;
- reads: `dataReceived` inflates before the line parser sees the bytes, at most INFLATE_CHUNK
  octets at a time and none while the session is paused, so a small compressed "bomb" never
  becomes more than one chunk in memory (pausing still stops reading the socket); the line
  parser's resumeProducing calls dataReceived(b"") and so drains what waited.

Memory per compressed connection, measured with tracemalloc: the deflater ~23 KiB (a 2 KiB
window, RFC 4978 4 allows windowBits -8 to -15 for deflateInit2, and memLevel 4), the inflater
~40 KiB (its window must be 32 KiB, windowBits -15, to read whatever window the client used).
zlib keeps both for the life of the connection: an idle compressed session costs about 63 KiB
more than an uncompressed one. Compression is never started unless the client asks.
"""
from __future__ import annotations

import zlib
from typing import Any

from appliance import maillog, replies
from appliance.imap.parse import Arguments

DEFLATE_WBITS = -11          # raw deflate, 2 KiB window
DEFLATE_MEMLEVEL = 4
DEFLATE_LEVEL = 6            # zlib's default; Dovecot's imap_compress_deflate_level default too
INFLATE_WBITS = -15          # raw inflate; must accept a 32 KiB window
INFLATE_CHUNK = 65536        # plain octets handed to the line parser at a time


class DeflatingTransport:
    """The session's transport with every write deflated and flushed; everything else passes through."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._deflater = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, DEFLATE_WBITS, DEFLATE_MEMLEVEL)

    def write(self, data: bytes) -> None:
        if data:
            self._transport.write(self._deflater.compress(data) + self._deflater.flush(zlib.Z_SYNC_FLUSH))

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CompressCommand:
    """COMPRESS in the authenticated and selected states (RFC 4978 3, `command-auth` in its grammar)."""

    transport: Any
    paused: bool
    peer: str
    sid: str
    factory: Any
    _buffer: bytes
    _reply: Any                  # IMAPServer's

    _inflater: Any = None
    _compressed: bytes = b""
    _draining: bool = False

    def do_COMPRESS(self, tag: bytes, mechanism: bytes) -> None:
        if self._inflater is not None:
            self._reply(tag, replies.IMAP_COMPRESSION_ACTIVE)
            return
        if mechanism.upper() != b"DEFLATE":
            self._reply(tag, replies.IMAP_UNKNOWN_COMPRESSION)
            return
        # What the client sent after the command line is compressed already: take it from the
        # line parser before it reads it as commands, and inflate it with the rest.
        pipelined, self._buffer = self._buffer, b""
        self._reply(tag, replies.IMAP_COMPRESSING)
        self.transport = DeflatingTransport(self.transport)
        self._inflater = zlib.decompressobj(INFLATE_WBITS)
        maillog.emit("imap-compress", session=self.sid)
        if pipelined:
            self.dataReceived(pipelined)

    auth_COMPRESS = select_COMPRESS = (do_COMPRESS, Arguments.arg_atom)

    def dataReceived(self, data: bytes) -> None:
        """From the transport: compressed. From inside the line parser while we feed it (its
        setLineMode after a literal, resumeProducing): plain already, so passed straight on."""
        if self._inflater is None or self._draining:
            super().dataReceived(data)  # type: ignore[misc]
            return
        self._compressed += data
        self._drain()

    def _drain(self) -> None:
        """Inflate and parse, a chunk at a time, while the session takes input.

        The lines the parser already holds go first: after a pipelined command paused the session
        (resumeProducing calls here with b""), the commands inflated behind it wait there."""
        self._draining = True
        try:
            super().dataReceived(b"")  # type: ignore[misc]
            while self._compressed and not self.paused and not self.transport.disconnecting:
                try:
                    plain = self._inflater.decompress(self._compressed, INFLATE_CHUNK)
                except zlib.error as exc:
                    self._broken(str(exc))
                    return
                if self._inflater.eof:
                    self._broken("the client ended its deflate stream")
                    return
                self._compressed = self._inflater.unconsumed_tail
                if plain:
                    super().dataReceived(plain)  # type: ignore[misc]
        finally:
            self._draining = False

    def _broken(self, reason: str) -> None:
        """Undecodable input: nothing sensible can follow, so the connection ends (no reply can be read)."""
        maillog.emit("imap-compress-error", session=self.sid, peer=self.peer, reason=reason)
        self._compressed = b""
        self.transport.loseConnection()
