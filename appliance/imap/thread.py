"""THREAD (RFC 5256 2.2 ORDEREDSUBJECT and 2.3 REFERENCES): pure algorithms and the response text.

A message here is a `Post`: its number (sequence number or UID, as the client asked), position in
the mailbox, sent date, raw Subject, Message-ID and the IDs it refers to. Trees can be as deep as
the mailbox is large (a 10,000-message reply chain), so nothing here recurses: every walk keeps
its own stack.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from appliance.imap.sort import subject_key

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
_MSG_ID = re.compile(rb"<([^<>\s]+)>")


@dataclass
class Post:
    number: int            # what the response shows: sequence number or UID
    position: int          # mailbox order, the tie break for equal dates
    date: float            # RFC 5256 2.2 sent date
    subject: bytes | None  # raw Subject value
    message_id: bytes | None = None
    references: bytes | None = None
    in_reply_to: bytes | None = None


@dataclass(eq=False)
class Node:
    post: Post | None                     # None: a dummy standing for a message not in the mailbox
    parent: "Node | None" = None
    children: list["Node"] = field(default_factory=list)

    def first_post(self) -> Post | None:
        """A dummy's date and subject are those of its first child (RFC 5256 REFERENCES steps 4-6)."""
        node: Node | None = self
        while node is not None and node.post is None:
            node = node.children[0] if node.children else None
        return node.post if node else None


def message_ids(value: bytes | None) -> list[bytes]:
    return _MSG_ID.findall(value) if value else []


def _sort_key(node: Node) -> tuple[float, int]:
    post = node.first_post()
    return (post.date, post.position) if post else (0.0, 0)


# ---------------------------------------------------------------- ORDEREDSUBJECT

def ordered_subject(posts: list[Post]) -> list[Node]:
    """RFC 5256 ORDEREDSUBJECT: by base subject, then date; each group's first message is the parent."""
    groups: dict[str, list[Post]] = {}
    for post in posts:
        groups.setdefault(subject_key(post.subject)[0], []).append(post)
    threads = []
    for group in groups.values():
        group.sort(key=lambda p: (p.date, p.position))
        root = Node(group[0])
        root.children = [Node(p, root) for p in group[1:]]
        threads.append(root)
    threads.sort(key=_sort_key)
    return threads


# ---------------------------------------------------------------- REFERENCES

def _link(child: Node, parent: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _unlink(node: Node) -> None:
    if node.parent is not None:
        node.parent.children.remove(node)
        node.parent = None


def _is_ancestor(node: Node, of: Node) -> bool:
    """Whether `node` is `of` or above it: linking `of` under a descendant of itself makes a loop.

    A node without children is above nothing: that answer costs no walk up a long reply chain.
    """
    if node is of:
        return True
    if not node.children:
        return False
    walker: Node | None = of
    while walker is not None:
        if walker is node:
            return True
        walker = walker.parent
    return False


def references(posts: list[Post]) -> list[Node]:
    """RFC 5256 REFERENCES, steps 1 to 6."""
    table: dict[bytes, Node] = {}
    nodes: list[Node] = []
    for post in sorted(posts, key=lambda p: p.position):
        nodes.append(_place(post, table))
    del table                                                   # step 3
    roots = [node for node in _all_nodes(nodes) if node.parent is None]
    roots = _prune(roots)                                       # step 4
    for root in roots:                                          # step 5: a dummy's children first
        if root.post is None:
            root.children.sort(key=_sort_key)
    roots.sort(key=_sort_key)
    roots = _merge_subjects(roots)                              # step 6
    _sort_siblings(roots)                                       # step 7
    return sorted(roots, key=_sort_key)


def _place(post: Post, table: dict[bytes, Node]) -> Node:
    """Step 1: the message's container, linked below the chain its References (or In-Reply-To) name."""
    own = message_ids(post.message_id)[:1]
    node = table.get(own[0]) if own else None
    if node is not None and node.post is None:
        node.post = post
    else:
        node = Node(post)                 # no Message-ID, or a duplicate: a container of its own
        if own and own[0] not in table:
            table[own[0]] = node
    refs = message_ids(post.references) or message_ids(post.in_reply_to)[:1]
    previous: Node | None = None
    for ref in refs:                                            # 1A: link the chain, parent to child
        container = table.get(ref)
        if container is None:
            container = table[ref] = Node(None)
        if previous is not None and container.parent is None and not _is_ancestor(container, previous):
            _link(container, previous)
        previous = container
    _unlink(node)                                               # 1B: the last reference is the parent
    if previous is not None and not _is_ancestor(node, previous):
        _link(node, previous)
    return node


def _all_nodes(nodes: list[Node]) -> list[Node]:
    """Every container reachable from the messages' own (dummies included), each once."""
    seen: dict[int, Node] = {}
    for node in nodes:
        walker: Node | None = node
        while walker is not None and id(walker) not in seen:
            seen[id(walker)] = walker
            walker = walker.parent
    return list(seen.values())


def _prune(roots: list[Node]) -> list[Node]:
    """Step 4: drop dummies without children, and splice out dummies whose children can move up.

    Children of a dummy at the root move up only when there is one of them. Bottom-up, without
    recursion: a node's children are pruned before the node itself is looked at.
    """
    order: list[Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):                 # children before parents
        if node.post is None and node.parent is not None:
            parent = node.parent
            index = parent.children.index(node)
            for child in node.children:
                child.parent = parent
            parent.children[index:index + 1] = node.children
            node.children, node.parent = [], None
    pruned: list[Node] = []
    for root in roots:
        if root.post is not None:
            pruned.append(root)
        elif len(root.children) == 1:
            child = root.children[0]
            child.parent = None
            pruned.append(child)
        elif root.children:
            pruned.append(root)
    return pruned


def _merge_subjects(roots: list[Node]) -> list[Node]:
    """Step 6: threads under the root with the same base subject come together."""
    table: dict[str, Node] = {}
    for root in roots:                                          # 6B: one thread per subject
        subject, refwd = _subject(root)
        if not subject:
            continue
        held = table.get(subject)
        if held is None or held.post is not None and (root.post is None or _subject(held)[1] and not refwd):
            table[subject] = root
    made: list[Node] = []
    for root in roots:                                          # 6C: merge the others into it
        subject, refwd = _subject(root)
        held = table.get(subject) if subject else None
        if held is None or held is root:
            continue
        if held.post is None and root.post is None:
            for child in list(root.children):
                _link(child, held)
        elif held.post is None or refwd and not _subject(held)[1]:
            _link(root, held)
        else:
            dummy = Node(None)
            _link(held, dummy)
            _link(root, dummy)
            table[subject] = dummy
            made.append(dummy)
    return [node for node in roots + made if node.parent is None and (node.post is not None or node.children)]


def _subject(node: Node) -> tuple[str, bool]:
    post = node.post if node.post is not None else (node.children[0].post if node.children else None)
    return subject_key(post.subject) if post is not None else ("", False)


def _sort_siblings(roots: list[Node]) -> None:
    """Step 7: every set of siblings by sent date (a dummy by its first child's), ties in mailbox order."""
    stack = list(roots)
    order: list[Node] = []
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):
        node.children.sort(key=_sort_key)


# ---------------------------------------------------------------- the response

def render(threads: list[Node]) -> bytes:
    """`(3 6 (4 23)(44 7 96))` per thread (RFC 5256 4): a lone child continues its parent's list."""
    out: list[bytes] = []
    for root in threads:
        out.append(b"(")
        stack: list[object] = [root]
        while stack:
            item = stack.pop()
            if isinstance(item, bytes):
                out.append(item)
                continue
            node = item
            assert isinstance(node, Node)
            if node.post is not None:
                if out[-1] != b"(":
                    out.append(b" ")
                out.append(b"%d" % node.post.number)
            if len(node.children) == 1 and node.post is not None:
                stack.append(node.children[0])
            elif node.children:
                for child in reversed(node.children):
                    stack.append(b")")
                    stack.append(child)
                    stack.append(b"(")
                if node.post is not None:
                    stack.append(b" ")
        out.append(b")")
    return b"".join(out)
