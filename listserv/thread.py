"""Threading decisions as pure functions over a small in-memory set of nodes.

After JWZ (https://www.jwz.org/doc/threading.html), done incrementally: the store loads
the nodes of the threads a message touches, `link` decides, the store writes back what
changed. Rules, strict as public-inbox and notmuch are:
- a message's parent is what its own headers say (In-Reply-To, else the last
  References entry), so the result does not depend on arrival order;
- a referenced message not seen yet is a placeholder; References chains give
  placeholders their parents, so a thread holds together around a missing message;
- a link that would make a loop is not made, but a message's own parent outweighs a
  link some other message's References implied (clients reorder References);
- subject matching is only a fallback for a reply with no references at all, and it
  joins the thread without inventing a parent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from listserv.parse import Parsed

# "Re:", "RE[2]:", "Fwd:", and the reply words of common non-English clients.
_PREFIX = re.compile(
    r"^\s*((re|aw|sv|vs|antw|odp|ref|rif|r|fwd?|wg|tr)(\[\d+\]|\(\d+\))?\s*:\s*|\[[^\]]*\]\s*)",
    re.IGNORECASE,
)
_REPLY = re.compile(r"^\s*(\[[^\]]*\]\s*)*(re|aw|sv|vs|antw|odp|ref|rif)(\[\d+\])?\s*:",
                    re.IGNORECASE)


@dataclass
class Node:
    message_id: str
    real: bool = False
    parent_id: str | None = None
    thread_id: str = ""
    by_subject: bool = False  # a root that joined thread_id through the subject fallback
    own_link: bool = False  # parent_id came from the message's own headers, not a chain

    def __post_init__(self) -> None:
        self.thread_id = self.thread_id or self.message_id


def strip_prefixes(subject: str) -> str:
    """The subject without reply prefixes ("Re:", "AW:", "Fwd:") and list tags."""
    previous = None
    while previous != subject:
        previous, subject = subject, _PREFIX.sub("", subject, count=1)
    return subject.strip()


def subject_key(subject: str) -> str:
    """The subject without reply prefixes and list tags, case-folded."""
    return " ".join(strip_prefixes(subject).split()).casefold()


def own_parent(parsed: Parsed) -> str | None:
    """In-Reply-To names the message answered; References may be reordered by clients.

    Mail with both where they disagree exists (corpus: threading-parent-priority);
    notmuch and mutt prefer In-Reply-To, and so do we.
    """
    if parsed.in_reply_to:
        return parsed.in_reply_to[0]
    return parsed.references[-1] if parsed.references else None


# Ancestors of a message that threading reads, nearest first. Clients send a few dozen
# at most (corpus: 10); a post with 5,000 References made as many placeholders, linked
# in time quadratic in their number, and held the writer for seconds.
MAX_CHAIN = 100


def chain(parsed: Parsed) -> list[str]:
    """The ancestry the message claims, oldest first, ending at its own parent; at most
    the MAX_CHAIN nearest."""
    ids = list(parsed.references)
    parent = own_parent(parsed)
    if parent and (not ids or ids[-1] != parent):
        ids.append(parent)
    return ids[-MAX_CHAIN:]


def wants_subject_fallback(parsed: Parsed) -> bool:
    """Only a message that says it is a reply but names no message at all."""
    return not parsed.in_reply_to and not parsed.references and bool(_REPLY.match(parsed.subject))


def touched(message_id: str, parsed: Parsed) -> set[str]:
    """The Message-IDs whose threads must be loaded to link this message."""
    return {message_id, *chain(parsed)}


def _is_ancestor(nodes: dict[str, Node], candidate: str, of: str) -> bool:
    """True when `candidate` is `of` or above it; the walk is bounded against bad data."""
    seen: set[str] = set()
    current: str | None = of
    while current is not None and current not in seen:
        if current == candidate:
            return True
        seen.add(current)
        node = nodes.get(current)
        current = node.parent_id if node else None
    return False


def _cut_implied_loop(nodes: dict[str, Node], child: str, parent: str) -> bool:
    """Make room to hang `child` under `parent`: if that would close a loop through links
    that other messages' References implied, cut the highest such link. False when the
    loop is made of messages' own parents only (two messages answering each other).
    """
    if not _is_ancestor(nodes, child, parent):
        return True
    path = []
    current = parent
    while current != child:
        path.append(nodes[current])
        current = nodes[current].parent_id  # type: ignore[assignment]
    weak = [n for n in path if not n.own_link]
    if not weak:
        return False
    weak[-1].parent_id = None
    return True


def _root(nodes: dict[str, Node], start: str) -> Node:
    seen: set[str] = set()
    node = nodes[start]
    while node.parent_id is not None and node.parent_id in nodes and node.message_id not in seen:
        seen.add(node.message_id)
        node = nodes[node.parent_id]
    return node


def _roots(nodes: dict[str, Node]) -> Callable[[str], Node]:
    """_root for many nodes of one set, each chain walked once: a node's root is its
    parent's, so a walk stops at the first node whose root is known (a thread of 200
    messages was walked to its root from every node, for every message added). A walk
    that ends in a loop (bad data) is not remembered: where it stops depends on where
    it started."""
    known: dict[str, Node] = {}

    def root(start: str) -> Node:
        path: set[str] = set()
        node = nodes[start]
        while node.message_id not in known:
            path.add(node.message_id)
            if node.parent_id is None or node.parent_id not in nodes:
                known[node.message_id] = node
                break
            node = nodes[node.parent_id]
            if node.message_id in path:
                return _root(nodes, start)
        found = known[node.message_id]
        known.update(dict.fromkeys(path, found))
        return found
    return root


def _thread_id(nodes: dict[str, Node], start: str, root: Callable[[str], Node]) -> str:
    """The id of the thread `start` is in: its root's id, or for a root that joined by
    subject, the thread of the node it joined, which a late parent may have re-rooted
    since (that node's thread is loaded with it: they shared the thread id)."""
    root_node = root(start)
    chain = [root_node.message_id]
    while root_node.by_subject and root_node.thread_id in nodes:
        root_node = root(root_node.thread_id)
        if root_node.message_id in chain:
            # What it joined now hangs under it (a reply named it as a parent): the
            # joins go round. Every node of the round trip must name the same thread.
            return min(chain[chain.index(root_node.message_id):])
        chain.append(root_node.message_id)
    return root_node.thread_id if root_node.by_subject else root_node.message_id


def state(node: Node) -> tuple:
    return (node.real, node.parent_id, node.thread_id, node.by_subject, node.own_link)


def link(nodes: dict[str, Node], message_id: str, parsed: Parsed,
         subject_thread: str | None = None) -> set[str]:
    """Add a real message to `nodes` (whole threads, as loaded) and return the ids of the
    nodes that are new or changed. `subject_thread` is the thread a subject-only reply
    should join, found by the store when `wants_subject_fallback` said so.
    """
    before = {k: state(n) for k, n in nodes.items()}
    ids = chain(parsed)
    for mid in [message_id, *ids]:
        nodes.setdefault(mid, Node(mid))
    me = nodes[message_id]
    me.real = True

    # References chains say how placeholders hang together (JWZ step 1B), but never
    # re-parent a node that already has a parent, and never make a loop.
    for older, newer in zip(ids, ids[1:], strict=False):
        node = nodes[newer]
        if (node.parent_id is None and older != newer
                and not _is_ancestor(nodes, newer, older)):
            node.parent_id = older

    parent = own_parent(parsed)
    if parent is not None and parent != message_id and _cut_implied_loop(nodes, message_id, parent):
        me.parent_id = parent
        me.own_link = True
    # else: no parent of its own (or one that would close a loop, as two messages
    # answering each other do): keep whatever References chains gave it.
    me.by_subject = me.parent_id is None and subject_thread is not None
    if me.by_subject and subject_thread is not None:
        me.thread_id = subject_thread

    root = _roots(nodes)
    threads = {mid: _thread_id(nodes, mid, root) for mid in nodes}
    for mid, node in nodes.items():
        node.thread_id = threads[mid]
    return {k for k, n in nodes.items()
            if before.get(k) != state(n)}


def nearest_real_parents(nodes: dict[str, Node]) -> dict[str, str | None]:
    """Each message's closest ancestor that is a message in the archive, skipping
    placeholders. One pass whatever the chains: each placeholder's answer is remembered,
    since a post with 5,000 References hangs on a chain of 5,000 placeholders, and
    walking it again for every post of the thread cost posts × chain."""
    known: dict[str, str | None] = {}  # placeholder -> the real node at or above it
    found: dict[str, str | None] = {}
    for mid, node in nodes.items():
        if node.real:
            above = _real_at_or_above(nodes, known, node.parent_id)
            found[mid] = None if above == mid else above  # a loop back to itself
    return found


def _real_at_or_above(nodes: dict[str, Node], known: dict[str, str | None],
                      current: str | None) -> str | None:
    path: list[str] = []
    on_path: set[str] = set()
    while (current is not None and current in nodes and not nodes[current].real
           and current not in known and current not in on_path):
        path.append(current)
        on_path.add(current)
        current = nodes[current].parent_id
    if current is None or current not in nodes or current in on_path:
        result = None
    else:
        result = current if nodes[current].real else known[current]
    known.update(dict.fromkeys(path, result))
    return result
