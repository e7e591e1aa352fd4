"""Markdown list markers as choice points: ``-`` / ``*`` bullets, one per list.

Ordered lists are tracked but never chosen: model answers often break a numbered list with a code block, so
"1." and "2." end up in separate lists; a chosen "1)" followed by an unchanged "2." renders the same but reads
oddly as raw text (terminals, plain-text clients). Bullet styles carry no such tell.

CommonMark renders ``- item`` and ``* item`` alike, and ``1. item`` and ``1) item`` alike, as long as every item
of one list keeps its marker: a different marker starts a new list. So the choice is made once per list, at its
first item, and every later item of that list gets the same marker. A list that directly follows another list
of the same kind at the same level, with a different marker in the original, is a separate list and must stay
separate: it gets the other marker ("forced", not a choice point), so two lists never merge. ``+`` bullets are
never chosen, only tracked.

Which items belong to one list is tracked with a stack of open lists, conservatively: a mistake may only make
two lists share one choice (a lost choice point), never split one list in two.
- an item at a column >= the content column of the innermost open item opens a nested list;
- an item at a shallower column closes the deeper lists; at the level of an open list it continues it (same
  marker) or replaces it (different marker or kind);
- a non-item line closes the lists whose items it is not indented into, unless it may be a lazy continuation
  line (paragraph text right after paragraph text); headings, fences, quotes and thematic breaks always do;
- a new ordered list is a choice point only when it is numbered 1: "2." after a paragraph line is paragraph
  text in CommonMark, and "2019." may open a sentence; such lines are tracked with their marker unchanged.
Items on lines indented 4+ columns (whose text the scanner protects as possible code) follow their list's
marker too but never open a choice point; a line there is rewritten only when it continues or follows an open
list at its level, i.e. when it is list context and not indented code.
"""

from __future__ import annotations

from dataclasses import dataclass

BULLETS = ("-", "*")  # the variants of a bullet list, in group order
DELIMITERS = (".", ")")  # the variants of an ordered list
_SPACE = " \t"
_CLOSED = 1 << 30  # content column of an item that can hold nothing more


@dataclass(frozen=True, slots=True)
class Marker:
    kind: str  # "bullet" | "ordered"
    col: int  # columns of indentation before the marker
    pos: int  # buffer index of the delimiter character (the one that may be rewritten)
    end: int  # buffer index just after the delimiter
    delim: str
    content_col: int
    number: str  # the digits of an ordered marker, "" for a bullet
    empty: bool = False  # nothing follows the marker on its line (an empty item, or a setext underline)


def parse_marker(s: str, k: int, col: int, final: bool) -> tuple[bool, Marker | None]:
    """Read a list marker at ``s[k]`` (first non-blank character of a line at ``col`` columns).

    Returns (complete, marker): complete=False when the buffer ends before the line can be classified; marker is
    None when the line is no list item (a thematic break); an empty item (which may also be a setext underline)
    is a marker with ``empty=True``: it follows its list's marker but never opens a choice point.
    """
    n = len(s)
    c = s[k]
    if c in "-*+":
        kind, num, p = "bullet", "", k
    elif "0" <= c <= "9":
        p = k
        while p < n and "0" <= s[p] <= "9" and p - k < 10:
            p += 1
        if p == n:
            return final, None
        if p - k > 9 or s[p] not in ".)":
            return True, None
        kind, num = "ordered", s[k:p]
    else:
        return True, None
    j = p + 1
    width = p + 1 - k
    if j == n and not final:
        return False, None
    if j == n or s[j] in "\r\n":
        return True, Marker(kind, col, p, p + 1, s[p], col + width + 1, num, empty=True)
    if s[j] not in _SPACE:
        return True, None
    q = j
    while q < n and s[q] in _SPACE:
        q += 1
    if q == n and not final:
        return False, None
    if q == n or s[q] in "\r\n":
        return True, Marker(kind, col, p, p + 1, s[p], col + width + 1, num, empty=True)
    if kind == "bullet" and c != "+" and s[q] == c:
        # "- - -" / "* * *" is a thematic break: an item only if something else follows on the line
        r = q
        count = 1
        while r < n and s[r] not in "\r\n":
            if s[r] == c:
                count += 1
            elif s[r] not in _SPACE:
                break
            r += 1
        else:
            if r == n and not final:
                return False, None
            if count >= 3:
                return True, None
    column = col + width
    for ch in s[j:q]:  # a tab advances to the next multiple of 4 columns
        column = (column // 4 + 1) * 4 if ch == "\t" else column + 1
    spaces = column - col - width
    content_col = col + width + (spaces if spaces <= 4 else 1)
    return True, Marker(kind, col, p, p + 1, s[p], content_col, num)


def interrupts(s: str, k: int, final: bool) -> tuple[bool, bool]:
    """(complete, yes): does the line whose first non-blank character is ``s[k]`` start a block that ends a
    paragraph -- an ATX heading, a block quote, a code fence or a thematic break? Such a line is never lazy
    paragraph continuation, so it closes every list it is not indented into."""
    n = len(s)
    c = s[k]
    if c == ">":
        return True, True
    if c == "#":
        r = k
        while r < n and s[r] == "#":
            r += 1
        if r == n:
            return final, final and r - k <= 6
        return True, r - k <= 6 and s[r] in " \t\r\n"
    if c in "`~":
        r = k
        while r < n and s[r] == c:
            r += 1
        if r == n and not final:
            return False, False
        return True, r - k >= 3
    if c in "-*_":
        count, r = 0, k
        while r < n and s[r] not in "\r\n":
            if s[r] == c:
                count += 1
            elif s[r] not in _SPACE:
                return True, False
            r += 1
        if r == n and not final:
            return False, False
        return True, count >= 3
    return True, False


@dataclass(slots=True)
class _Open:
    col: int
    content_col: int
    kind: str
    orig: str  # marker of the list as read
    out: str  # marker written for it
    empty: bool = False  # its latest item has no content yet (a blank line then closes that item)


class ListTracker:
    """The open lists of the text so far; decides, per item, whether it is a choice point or which marker to
    write. The same decisions come out when it reads the watermarked text (the detector's view)."""

    def __init__(self) -> None:
        self._stack: list[_Open] = []
        self._para = False  # the previous line left a paragraph open (the next text line may be lazy)
        self._para_col = 0  # content column of the container holding that paragraph
        self._html = False  # inside what may be a raw HTML block (to the next blank line): no items there
        self._quoted = False  # since a block quote line (to the next blank line): new lists are not chosen

    @property
    def open(self) -> bool:
        """Some list is open (the scanner then ends inline code at any line that starts a block)."""
        return bool(self._stack)

    def html_line(self) -> None:
        """A line starting with "<": possibly a raw HTML block, whose lines are not markdown."""
        self._html = True

    def blank_line(self) -> None:
        self._html = self._quoted = False
        if self._stack and self._stack[-1].empty:
            # an item may begin with at most one blank line: an empty item is over, nothing nests in it now
            self._stack[-1].content_col = _CLOSED
        self._para = False

    def other_line(self, col: int, interrupt: bool = False, code: bool = False, quote: bool = False) -> None:
        """A non-blank line that is no list item, at ``col`` columns. Text right after an open paragraph may be
        a lazy continuation line of it and closes nothing; otherwise it closes the lists it is not indented
        into, and so does a line that ``interrupts`` a paragraph. ``code``: a line indented 4+ columns, which
        continues an open paragraph lazily or else is indented code. ``quote``: a block quote line, which
        interrupts but holds a paragraph that later lines may continue lazily."""
        if self._html:
            return
        if interrupt or not self._para:
            while self._stack and col < self._stack[-1].content_col:
                self._stack.pop()
            self._para_col = self._stack[-1].content_col if self._stack else 0
        if not code:
            self._para = quote or not interrupt
        if quote:
            # a line without ">" is outside the quote, so no marker there continues its paragraph; what nests
            # inside a quote is not tracked here: until the next blank line, follow open lists and
            # keep the others as they are, so no list there can be chosen into a neighbour's marker
            self._para_col, self._quoted = _CLOSED, True

    def item(self, m: Marker) -> tuple[bool, str]:
        """(choose, marker): choose=True means a new list whose marker is a choice point (call ``opened`` with
        the chosen marker); otherwise write ``marker`` ("": no item after all -- the line is accounted for,
        leave it alone)."""
        if self._html:
            return False, ""
        level: _Open | None = None
        depth = len(self._stack)
        container = 0  # content column of the item (or document) the marker sits in
        while depth:
            top = self._stack[depth - 1]
            parent = self._stack[depth - 2].content_col if depth > 1 else 0
            if m.col >= top.content_col:
                container = top.content_col
                break  # nested in top's item: a new list
            if m.col >= parent:
                level, container = top, parent
                break
            depth -= 1
        if m.col - container > 3:
            self.other_line(m.col, code=True)
            return False, ""  # indented 4+ past its container: code or paragraph text, no item
        if self._para and m.col >= self._para_col and (m.empty or (m.kind == "ordered" and m.number != "1")) \
                and not (level is not None and level.kind == m.kind and level.orig == m.delim):
            # cannot interrupt the paragraph open in its own container: paragraph text, or a setext underline
            self._para = not (m.empty and m.delim == "-")
            return False, ""
        if level is not None and level.kind == m.kind and level.orig == m.delim:
            del self._stack[depth:]
            level.col, level.content_col = m.col, m.content_col  # the latest item is where children nest
            level.empty = m.empty
            self._para, self._para_col = not m.empty, m.content_col
            return False, level.out  # the same list goes on
        del self._stack[depth - (1 if level is not None else 0):]
        self._para, self._para_col = not m.empty, m.content_col
        if level is not None and level.kind == m.kind:  # a different marker: a new list that must stay apart
            self._stack.append(_Open(m.col, m.content_col, m.kind, m.delim, _other(m, level.out), m.empty))
            return False, self._stack[-1].out
        if m.delim == "+" or m.empty or self._quoted or m.kind == "ordered":  # ordered: see the module doc
            self._stack.append(_Open(m.col, m.content_col, m.kind, m.delim, m.delim, m.empty))
            return False, m.delim
        return True, m.delim

    def protected_item(self, m: Marker) -> str:
        """An item on a line indented 4+ columns, whose text the scanner leaves alone: it follows its list's
        marker like any item (so a list is never split), but never opens a choice point."""
        choose, mark = self.item(m)
        if choose:
            self.opened(m, m.delim)
        return mark or m.delim

    def opened(self, m: Marker, out: str) -> None:
        self._stack.append(_Open(m.col, m.content_col, m.kind, m.delim, out, m.empty))


def _other(m: Marker, neighbour: str) -> str:
    """The marker of a list that must differ from the list just before it (which was written ``neighbour``)."""
    variants = BULLETS if m.kind == "bullet" else DELIMITERS
    if m.delim not in variants or neighbour not in variants:
        return m.delim  # "+" is never written for a choice, so it already differs
    return variants[1 - variants.index(neighbour)]
