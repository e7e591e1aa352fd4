"""Tokenizer-free, incremental scan of markdown-ish text that finds the lexical choice points (slots).

One left-to-right engine serves embedding (the callback returns the variant to write) and detection (the
callback records what it saw and keeps it). Streaming equals batch by construction: ``run`` only consumes text
whose treatment cannot change when more text arrives, and holds the rest (an incomplete word, the start of a
line not yet classified, or a word that may begin a phrase plus the few words needed to decide it).

Never touched (copied verbatim, never a slot):
- fenced code blocks (a line starting with up to 3 spaces and ``` or ~~~, to the closing fence line);
- indented lines (4+ columns of leading whitespace: indented code; nested list text is spared too, at a small
  cost in slots);
- inline code (a backtick run to the next run of the same length, or to the end of the paragraph or the next
  line that starts a list item, quote or heading);
- any whitespace-delimited chunk that is not "punctuation + letters/apostrophes + punctuation": numbers, URLs,
  e-mail addresses, paths, identifiers, hyphenated words, markup with symbols;
- the punctuation and markdown markers around a word, and the capitalisation pattern of the phrase.

List markers ("-"/"*" bullets, "1."/"1)" delimiters) are choice points too, one per list, when the scanner is
built with ``markdown=True``; ``watermark.listmarks`` decides which items belong to one list. The first word of
a list item counts as the start of a sentence.

This module is the block structure (fences, indented and inline code, list lines) and the left-to-right loop;
what the scanner remembers of the text read is ``watermark.scan_state``, and which phrase is a slot and how its
variant is written is ``watermark.slots``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from watermark import language
from watermark.chunks import CHUNK, WS, Chunk, collect, parse_chunk
from watermark.lexicon import Lexicon
from watermark.listmarks import BULLETS, DELIMITERS, ListTracker, Marker, interrupts, parse_marker
from watermark.scan_state import ScanState
from watermark.slots import decided, match, render

# Inline code ends at its closing run, at a blank line, or where a line starts a new block (a list item, a
# quote, a heading): a code span never crosses into another block.
_BLOCK_START = (r"(?:(?:[-*+]|[0-9]{1,9}[.)])(?:[ \t\r\n]|\Z)|>|#{1,6}(?:[ \t\r\n]|\Z)|`{3}|~{3}"
                r"|([-*_])[ \t]*(?:\1[ \t]*){2,}(?:\r?\n|\Z))")
_INLINE_END = re.compile(r"`+|\n[^\S\n]*\n|\n(?=[ ]{0,3}" + _BLOCK_START + ")")
# inside a list, a block may start at any indentation (a nested item "\t- x" is one)
_INLINE_END_IN_LIST = re.compile(r"`+|\n[^\S\n]*\n|\n(?=[ \t]*" + _BLOCK_START + ")")
# the end of the buffer may still become a blank line or a block start: held back while inside inline code
_NL_TAIL = re.compile(r"(?:\n[^\S\n]*)+(?:[0-9]{1,9}[.)]?|#{1,6}|`{1,2}|~{1,2}|(?:[-*+_][ \t]*)+)?\Z")
_WORDISH = re.compile(r"\n|`|[A-Za-z]+(?:['’][A-Za-z]+)*")
# the next word, possibly after a soft line break; with its inner apostrophes ("it isn't": a phrase's second word
# may be a contraction)
_NEXT_WORD = re.compile(r"[ \t\r]*[ \t\n]([A-Za-z]+(?:['’][A-Za-z]+)*)")
_ONLY_SPACE = re.compile(r"[ \t\r]*\n?\Z")
_LIST_START = "-*+0123456789"

# on_slot(group index, observed variant, context word) -> variant to write
SlotFn = Callable[[int, int, str], int]


class Scanner:
    def __init__(self, lexicon: Lexicon, max_level: int, markdown: bool = True,
                 plain_fences: frozenset[int] = frozenset()) -> None:
        self._lex = lexicon
        self._max_level = max_level
        # detection only (one ``run`` over a whole text): offsets of fence markers read as plain backticks
        # (an inline code span) rather than as a fence, for the reading of a text whose fence never closes
        self._plain_fences = plain_fences
        self.state = ScanState()
        self._parallel = frozenset(w for g in lexicon.groups for w in g.parallel)
        # list markers as choice points (see watermark.listmarks); None: list lines are plain text
        self._lists = ListTracker() if markdown else None
        # offset, in the text passed to the current ``run``, of the slot being decided when ``on_slot`` is called
        # (the detector reads the text just before a slot to recognise passages that repeat verbatim)
        self.slot_at = 0

    def _list_marker(self, m: Marker, on_slot: SlotFn) -> str:
        """The marker to write for a list item ("" when the line is no item after all)."""
        assert self._lists is not None
        choose, mark = self._lists.item(m)
        if not choose:
            return mark
        marks = BULLETS if m.kind == "bullet" else DELIMITERS
        group = self._lex.bullet_group if m.kind == "bullet" else self._lex.ordered_group
        self.slot_at = m.pos
        mark = marks[on_slot(group, marks.index(m.delim), self.state.prev)]
        self._lists.opened(m, mark)
        return mark

    def run(self, s: str, final: bool, on_slot: SlotFn) -> tuple[str, int]:
        """Process ``s`` (held text + new text); return (output, number of input chars consumed)."""
        st = self.state
        out: list[str] = []
        i, n = 0, len(s)
        while i < n:
            if st.fence:
                j = s.find("\n", i)
                if j < 0:
                    st.fence_line += s[i:]
                    out.append(s[i:])
                    i = n
                    break
                line = st.fence_line + s[i:j]
                out.append(s[i : j + 1])
                i = j + 1
                if not st.fence_opener and _closes(line, st.fence):
                    st.fence = ""
                st.fence_line, st.fence_opener, st.at_line_start = "", False, True
                continue
            if st.inline:
                tail = None if final else _NL_TAIL.search(s, i)
                hold = n if tail is None else tail.start()
                ends = _INLINE_END_IN_LIST if self._lists is not None and self._lists.open else _INLINE_END
                m = ends.search(s, i, hold)
                if m is None:  # code so far: emit it, holding only a line break that may start a block
                    out.append(s[i:hold])
                    i = hold
                    break
                if m.group().startswith("`"):
                    if m.end() == hold and not final:  # the run may go on in the next delta
                        out.append(s[i : m.start()])
                        i = m.start()
                        break
                    if len(m.group()) == st.inline:
                        st.inline = 0
                    out.append(s[i : m.end()])
                    i = m.end()
                    continue
                # a blank line or a new block ends the paragraph and any unterminated code span; the next line
                # is classified as usual (the list tracker sees it)
                st.inline, st.at_line_start, st.last_char = 0, True, "\n"
                out.append(s[i : m.start() + 1])
                i = m.start() + 1
                continue
            if st.protect_line:
                j = s.find("\n", i)
                if j < 0:
                    out.append(s[i:])
                    i = n
                    break
                out.append(s[i : j + 1])
                i = j + 1
                st.protect_line, st.at_line_start = False, True
                continue
            if st.at_line_start:
                k = i
                width = 0
                while k < n and s[k] in " \t":
                    width += 4 if s[k] == "\t" else 1
                    k += 1
                if k == n and not final:
                    break  # cannot classify the line yet
                lists = self._lists
                if k < n and s[k] != "\n" and width >= 4:
                    if lists is not None and s[k] in _LIST_START:
                        complete, marker = parse_marker(s, k, width, final)
                        if not complete:
                            break
                        if marker is not None:  # an item of an open list keeps that list's marker
                            mark = lists.protected_item(marker)
                            out.append(s[i : marker.pos] + mark)
                            i = marker.end
                    elif lists is not None:
                        lists.other_line(width, code=True)
                    st.protect_line = True
                    st.at_line_start = False
                    continue
                elif lists is not None and k < n and s[k] in _LIST_START:
                    complete, marker = parse_marker(s, k, width, final)
                    if not complete:
                        break
                    if marker is not None:
                        mark = self._list_marker(marker, on_slot)
                        if mark:
                            out.append(s[i : marker.pos] + mark)
                            i = marker.end
                            st.at_line_start = False
                            continue
                    else:
                        complete, interrupt = interrupts(s, k, final)
                        if not complete:
                            break
                        lists.other_line(width, interrupt, quote=s[k] == ">")
                elif lists is not None:
                    if k == n or s[k] in "\r\n":
                        lists.blank_line()
                    elif s[k] == "<":
                        lists.html_line()
                    else:
                        complete, interrupt = interrupts(s, k, final)
                        if not complete:
                            break
                        lists.other_line(width, interrupt, quote=s[k] == ">")
                if k < n and s[k] in "`~" and width < 4 and k not in self._plain_fences:
                    r = k
                    while r < n and s[r] == s[k]:
                        r += 1
                    if r == n and not final:
                        break
                    if r - k >= 3:
                        st.fence, st.fence_opener, st.fence_at = s[k:r], True, k
                        st.fence_line = s[i:r]
                        out.append(s[i:r])
                        i = r
                        st.at_line_start = False
                        continue
                st.at_line_start = False
                out.append(s[i:k])
                i = k
                continue
            j = self._skip(s, i, final)
            if j > i:  # fast path: plain text up to the next newline, backtick or possible slot
                st.absorb(s, i, j, self._parallel)
                out.append(s[i:j])
                i = j
                continue
            if j < 0:
                break  # only an incomplete chunk is left: wait for more text
            c = s[i]
            if c == "\n":
                out.append(c)
                i += 1
                if st.last_char == "\n":  # a blank line: a new paragraph may be in another language
                    st.lang, st.para_number = "", False
                st.at_line_start, st.last_char, st.last_number = True, "\n", False
                continue
            m = WS.match(s, i)
            if m:
                out.append(m.group())
                i = m.end()
                continue
            if c == "`":
                r = i
                while r < n and s[r] == "`":
                    r += 1
                if r == n and not final:
                    break
                st.inline = r - i
                out.append(s[i:r])
                i = r
                continue
            m = CHUNK.match(s, i)
            if m is None:  # unreachable: a non-space, non-backtick character always starts a chunk
                raise RuntimeError(f"scanner: no chunk at offset {i}")
            if m.end() == n and not final:
                break  # the word may continue
            chunk = parse_chunk(s, i, m.end())
            if not chunk.word or (m.end() < n and s[m.end()] == "`"):  # glued to inline code: verbatim
                if m.end() == n or s[m.end()] != "`":
                    st.lang = language.note(st.lang, (s[i : m.end()],))
                out.append(s[i : m.end()])
                st.last_char, st.last_number = s[m.end() - 1], chunk.number
                st.para_number = st.para_number or chunk.number
                st.count_chunk(chunk.low, s[m.end() - 1], self._parallel)
                i = m.end()
                continue
            if "’" in s[i : m.end()]:
                st.apostrophe = "’"
            cands = self._lex.by_first.get(chunk.low)
            if not cands:
                st.lang = language.note(st.lang, (s[i : m.end()],))
                out.append(s[i : m.end()])
                st.prev, st.last_char, st.last_number = chunk.low, s[m.end() - 1], False
                st.count_chunk(chunk.low, s[m.end() - 1], self._parallel)
                i = m.end()
                continue
            seq, complete = collect(s, chunk, self._lex.lookahead[chunk.low], final)
            if not complete and not decided(self._lex, seq):
                break  # hold the possible phrase until the words that decide it arrive
            done = self._try_slot(s, seq, on_slot, out)
            if done is None:
                st.lang = language.note(st.lang, (s[i : m.end()],))
                out.append(s[i : m.end()])
                st.prev, st.last_char, st.last_number = chunk.low, s[m.end() - 1], False
                st.count_chunk(chunk.low, s[m.end() - 1], self._parallel)
                i = m.end()
            else:
                i = done
                st.last_char, st.last_number = s[done - 1], False
        return "".join(out), i

    def _skip(self, s: str, i: int, final: bool) -> int:
        """End of the stretch from ``i`` that holds no newline, backtick or chunk with a candidate word; -1
        when that stretch is an incomplete chunk at the end of the buffer."""
        first, seconds = self._lex.by_first, self._lex.seconds
        n = len(s)
        for m in _WORDISH.finditer(s, i):
            w = m.group()
            if w == "\n" or w == "`":
                return m.start()
            lw = w.lower()
            if "’" in lw:
                lw = lw.replace("’", "'")
            if lw not in first:
                continue
            need = seconds.get(lw)
            if need is not None:  # only phrases start here: a cheap look at the next word rules most out
                nm = _NEXT_WORD.match(s, m.end())
                # the word is complete when more text follows it, other than an apostrophe the next delta may
                # continue ("isn'" may become "isn't")
                whole = final or (nm is not None and (nm.end() + 1 < n or (nm.end() < n and s[nm.end()] not in "'’")))
                if nm is not None and whole and nm.group(1).lower().replace("’", "'") not in need:
                    continue
                if nm is None and (final or _ONLY_SPACE.match(s, m.end()) is None):
                    continue
            k = max(s.rfind(" ", i, m.start()), s.rfind("\t", i, m.start()), s.rfind("\r", i, m.start()))
            return k + 1 if k >= i else i
        if final:
            return len(s)
        k = max(s.rfind(" ", i), s.rfind("\t", i), s.rfind("\r", i))
        return k + 1 if k >= i else -1

    def _try_slot(self, s: str, seq: list[Chunk], on_slot: SlotFn, out: list[str]) -> int | None:
        found = match(self._lex, self._max_level, self.state, s, seq)
        if found is None:
            return None
        cand, grp, part = found
        st = self.state
        self.slot_at = part[0].start
        chosen = on_slot(cand.group, cand.variant, st.prev)
        if chosen == cand.variant:  # the text already says it: keep it byte for byte
            out.append(s[part[0].start : part[-1].end])
        else:
            out.append(part[0].lead + render(grp, chosen, part, st.apostrophe) + part[-1].trail)
        st.prev = grp.variants[chosen][-1]
        st.count_chunk(cand.words[0] if grp.parallel else "", s[part[-1].end - 1], self._parallel)
        return part[-1].end



def _closes(line: str, fence: str) -> bool:
    body = line.rstrip("\r")
    stripped = body.lstrip(" ")
    if len(body) - len(stripped) > 3:
        return False
    run = len(stripped) - len(stripped.lstrip(fence[0]))
    return run >= len(fence) and not stripped[run:].strip()
