"""The SORT and THREAD commands (RFC 5256, RFC 5267 ESORT); a session mixin.

Both search first (the keys are SEARCH's, after a mandatory charset), then order what matched:
SORT from the cached metadata alone (appliance.imap.sort), THREAD=REFERENCES also from each
message's References field, read once per message and remembered for the life of the process
(a message's header never changes under its UID).
"""
from __future__ import annotations

import threading
from typing import Any

from appliance import message, replies
import appliance.imap.envelope as envelope
import appliance.imap.search as search
import appliance.imap.sort as sort
import appliance.imap.thread as thread
from appliance.imap.backend import Folder, Meta, mime
from appliance.imap.parse import Arguments

_REFERENCES_CACHE_LIMIT = 200_000       # entries; the cache is emptied when it grows past this
_references: dict[tuple[str, int, int], bytes | None] = {}
_references_guard = threading.Lock()


_KEYS_LIMIT = 1_000_000                  # cached sort keys, all folders and criteria; emptied past this
_keys: dict[tuple[str, int, str], dict[int, object]] = {}
_keys_guard = threading.Lock()


def sort_keys(folder: Folder, criterion: str, uids: list[int]) -> dict[int, object]:
    """Blocking: uid -> sort key for one criterion, computed once per message and kept.

    A message never changes under its UID (RFC 3501 2.3.1.1), so neither do its keys: a repeated
    SORT looks them up instead of walking the metadata index again.
    """
    with _keys_guard:
        if sum(len(table) for table in _keys.values()) + len(uids) > _KEYS_LIMIT:
            _keys.clear()
        table = _keys.setdefault((folder.path, folder.state.uidvalidity, criterion), {})
    missing = [uid for uid in uids if uid not in table]
    if missing:
        metas = folder.meta(missing)
        key = sort.key_function(criterion)
        table.update((uid, key(metas.get(uid))) for uid in missing)
    return table


def sorted_uids(folder: Folder, nodes: list, candidates: Any, criteria: list[tuple[str, bool]]) -> list[int]:
    """Blocking: the UIDs of the matching messages in sort order; `candidates` are UIDs for ALL."""
    if nodes == [("ALL",)]:
        uids = list(candidates)                          # every message: nothing to test
    else:
        uids = [c.uid for c in search.run(nodes, candidates, folder.read, folder.meta)]
    return sort.order(uids, criteria, lambda criterion: sort_keys(folder, criterion, uids))


def _references_of(folder: Folder, validity: int, uid: int) -> bytes | None:
    """Blocking: a message's References field, from the cache or its file's header block."""
    key = (folder.path, validity, uid)
    with _references_guard:
        if key in _references:
            return _references[key]
    try:
        head = mime.split_head(folder.read(uid))[0]
    except (KeyError, OSError):
        return None
    value = message.get(head, b"references")
    with _references_guard:
        if len(_references) >= _REFERENCES_CACHE_LIMIT:
            _references.clear()
        _references[key] = value
    return value


def thread_posts(folder: Folder, found: list, metas: dict[int, Meta], by_uid: bool,
                 with_references: bool) -> list[thread.Post]:
    """Blocking: what the threading algorithms need of each found message."""
    validity = folder.state.uidvalidity
    posts = []
    for candidate in found:
        meta = metas.get(candidate.uid)
        env = envelope.safe(meta.envelope) if meta is not None else envelope.EMPTY
        refs = _references_of(folder, validity, candidate.uid) if with_references else None
        posts.append(thread.Post(candidate.uid if by_uid else candidate.seq, candidate.seq, sort.sent_date(meta),
                                 env.subject, env.message_id, refs, env.in_reply_to))
    return posts


class SortThreadCommands:
    """SORT, UID SORT, THREAD, UID THREAD in the selected state."""

    folder: Folder | None
    view: Any
    _candidates: Any           # SelectedCommands._candidates
    _run: Any                  # IMAPServer._run: blocking work in the disk pool
    _reply: Any
    _completed: Any
    sendBadResponse: Any
    sendUntaggedResponse: Any

    def _search_program(self, tag: bytes, tokens: list) -> search.Program | None:
        """The charset and search keys that SORT and THREAD share; None once the command is refused."""
        try:
            search.charset_of(tokens)
            return search.Program(search.keys(tokens))
        except search.CharsetError:
            self._reply(tag, replies.IMAP_BAD_CHARSET)
        except search.SearchError as exc:
            self.sendBadResponse(tag, str(exc).encode())
        return None

    def do_SORT(self, tag: bytes, tokens: list, uid: int = 0) -> None:
        returns = None
        try:
            if tokens and isinstance(tokens[0], bytes) and tokens[0].upper() == b"RETURN":
                tokens.pop(0)
                returns = search.return_options(tokens)
            if not tokens or not isinstance(tokens[0], list):
                raise sort.SortError("Missing sort criteria")
            criteria = sort.parse_criteria(tokens.pop(0))
        except (sort.SortError, search.SearchError) as exc:
            self.sendBadResponse(tag, str(exc).encode())
            return
        program = self._search_program(tag, tokens)
        if program is None:
            return
        folder, view = self.folder, self.view
        assert folder is not None and view is not None
        known = view.known
        # Every message (the common SORT ... ALL) needs no Candidate objects made in the reactor.
        candidates = known.uids if program.nodes == [("ALL",)] else self._candidates()
        d = self._run(sorted_uids, folder, program.nodes, candidates, criteria)
        d.addCallback(self._sorted, tag, known if not uid else None, returns)
        d.addErrback(self._fail, tag)

    select_SORT = (do_SORT, Arguments.arg_tokens)

    def _sorted(self, uids: list[int], tag: bytes, numbering: Any, returns: list[str] | None) -> None:
        """Answer with UIDs, or (`numbering`: the snapshot the numbers refer to) sequence numbers."""
        by_uid = numbering is None
        numbers = uids if by_uid else [numbering.position[u] + 1 for u in uids]
        if returns is not None:
            self.sendUntaggedResponse(search.esearch(tag, numbers, returns, by_uid, sorted_order=True))
        else:
            text = b" ".join(b"%d" % n for n in numbers)
            self.sendUntaggedResponse(b"SORT" + (b" " + text if text else b""))
        self._completed(tag, b"SORT")

    def do_THREAD(self, tag: bytes, tokens: list, uid: int = 0) -> None:
        algorithm = tokens.pop(0).upper().decode("ascii", "replace") if tokens and isinstance(tokens[0], bytes) else ""
        if algorithm not in thread.ALGORITHMS:
            self.sendBadResponse(tag, b"Unknown threading algorithm")
            return
        program = self._search_program(tag, tokens)
        if program is None:
            return
        folder = self.folder
        assert folder is not None
        by_uid, candidates = bool(uid), self._candidates()

        def blocking() -> bytes:
            found, metas = search.run_with_meta(program.nodes, candidates, folder.read, folder.meta, True)
            posts = thread_posts(folder, found, metas, by_uid, algorithm == "REFERENCES")
            trees = thread.references(posts) if algorithm == "REFERENCES" else thread.ordered_subject(posts)
            return thread.render(trees)

        d = self._run(blocking)
        d.addCallback(self._threaded, tag)
        d.addErrback(self._fail, tag)

    select_THREAD = (do_THREAD, Arguments.arg_tokens)

    def _threaded(self, text: bytes, tag: bytes) -> None:
        self.sendUntaggedResponse(b"THREAD" + (b" " + text if text else b""))
        self._completed(tag, b"THREAD")
