"""A1111's prompt syntax: prompt editing, alternation, emphasis weights, ``BREAK`` and ``AND``.

The public functions keep A1111's names, signatures and return shapes, so A1111-era code can call them:
:func:`get_learned_conditioning_prompt_schedules` (``[a:b:N]``, ``[a:N]``, ``[a::N]``, ``[a|b]`` → ``[end_at_step,
text]`` pairs, emphasis kept verbatim), :func:`parse_prompt_attention` (``(a)``, ``(a:1.3)``, ``[a]``, escapes,
``BREAK`` → ``[text, weight]`` pairs) and :func:`get_multicond_prompt_list` (``a :1.2 AND b`` → weighted parts).

How schedules are parsed. A1111 runs one ambiguous lark Earley grammar over the whole prompt; its top level
also accepts stray ``[ ] ( ) :``. That costs seconds to minutes on long prompts (lark 1.3.1: 74 s for 2 000
characters holding a hundred groups) and hits ``RecursionError`` a few hundred brackets deep. The reading it
settles on makes every bracket group that *can* be a construct one and leaves the rest literal — except where
stray brackets or colons touch a construct (``[a:3]((``): there lark 1.1.2, A1111's pin, breaks a tie in hash
order, so A1111's answer changes with the process's ``PYTHONHASHSEED``; we take the every-valid-group-counts
reading, one of those answers. So: brackets are matched in one pass; each group is decided from the inside
out (a group containing an invalid one is invalid); a square group with ``:`` or ``|`` is decided by a small
lark Earley grammar holding A1111's rules, run on that group's own text with the groups inside replaced by a
placeholder character. A ``|`` outside every valid group, or a ``\\`` followed by nothing or a newline, makes
the prompt unparsable, and then, as in A1111, it is used as-is for all steps. Nothing recurses.
``tests/test_prompt_parser.py`` checks the results against A1111's grammar parsed whole.

Where A1111 raises, we return instead (decisions, not A1111 behaviour): an infinite step number
(``[a:b:1e400]``) never switches, a weight that is not a number (``(a:1.2.3)``) stays literal text, and weights
are clamped to the finite float range.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import lark

log = logging.getLogger(__name__)

#: One entry of a prompt schedule: the text applies while ``step <= end_at_step``.
ScheduledPrompt = tuple[int, str]

# A1111's rules for one square-bracket group with ``:`` or ``|`` whose inner groups are now placeholder text: a
# schedule with an optional "before" part and lark's SIGNED_NUMBER between optional whitespace, or an alternation
# whose options may be empty. Plain text is A1111's: any character but ``\ [ ] ( ) : |``, or a ``\`` escape.
_GROUP_GRAMMAR = r"""
?start: scheduled | alternate
scheduled: "[" [text ":"] text ":" [SPACE] NUMBER [SPACE] "]"
alternate: "[" text ("|" [text])+ "]"
text: (PLAIN | SPACE)*
PLAIN: /(?:[^\\\[\]():|]|\\.)+/
SPACE: /\s+/
%import common.SIGNED_NUMBER -> NUMBER
"""
_CLOSER = {"(": ")", "[": "]"}
_FLOAT_MAX = sys.float_info.max


@functools.cache
def _group_parser() -> lark.Lark:
    """The lark Earley parser for one bracket group, built on first use (never at import)."""
    return lark.Lark(_GROUP_GRAMMAR, parser="earley", maybe_placeholders=True)


# A parsed prompt is a tuple of items: literal text (emphasis brackets included, so they are re-emitted
# verbatim), nested tuples, and the two constructs whose text depends on the step.

@dataclass(frozen=True)
class _Scheduled:
    """``[before:after:N]``: ``before`` while ``step <= when``, then ``after``."""

    before: tuple
    after: tuple
    when: float


@dataclass(frozen=True)
class _Alternate:
    """``[a|b|...]``: option ``(step - 1) % len(options)`` at each step."""

    options: tuple[tuple, ...]


@dataclass(frozen=True)
class _Timing:
    """How a schedule number becomes a step: A1111's integer / fraction / hires-offset / old rules."""

    steps: int
    int_offset: int = 0
    float_offset: float = 0.0
    old: bool = False

    def end_step(self, number: str) -> float:
        """The last step of the "before" part for the number text ``number``, clamped to ``steps``."""
        value = float(number)
        if self.old:
            value = value * self.steps if value < 1 else value
        elif "." in number:
            value = (value - self.float_offset) * self.steps
        else:
            value = value - self.int_offset
        if math.isnan(value):  # inf * 0 steps (A1111 raises): as 0
            value = 0.0
        if math.isinf(value):  # A1111 raises: +inf never switches, -inf is "after" from the start
            return self.steps if value > 0 else value
        return min(self.steps, int(value))


def _timing(base_steps: int, hires_steps: int | None, use_old_scheduling: bool) -> _Timing:
    """A1111's offsets: the hires pass counts integers from ``base_steps`` and fractions from 1.0."""
    if hires_steps is None or use_old_scheduling:
        return _Timing(base_steps, old=use_old_scheduling)
    return _Timing(hires_steps, int_offset=base_steps, float_offset=1.0)


@dataclass(frozen=True)
class _Group:
    """A matched bracket pair ``prompt[start:end]``: its items, and whether it is a valid construct."""

    start: int
    end: int
    items: tuple
    valid: bool


@dataclass
class _Open:
    """An opening bracket waiting for its closer, with what has been seen directly inside it so far."""

    pos: int
    char: str
    children: list[_Group] = field(default_factory=list)
    colons: int = 0
    pipes: int = 0


def _interleave(text: str, marker: str, children: Iterator[tuple]) -> tuple:
    """``text`` split at each ``marker``, with the next child's items in place of each marker."""
    pieces = text.split(marker)
    items: list = [pieces[0]]
    for piece in pieces[1:]:
        items += [next(children), piece]
    return tuple(item for item in items if item != "")


@functools.lru_cache(maxsize=1024)
def _group_shape(level: str) -> tuple[str, tuple[str, ...], str] | None:
    """What the grammar makes of one square-bracket group: ``("scheduled", (before, after), number)`` or
    ``("alternate", options, "")``, texts still holding placeholders; None when it is neither. Cached: prompts
    repeat between jobs, and nested groups of one shape give the same text."""
    try:
        tree = _group_parser().parse(level)
    except (lark.exceptions.LarkError, RecursionError):  # RecursionError: a giant group (A1111 crashes there)
        return None

    def text(part: lark.Tree | None) -> str:  # None: an omitted optional part
        return "" if part is None else "".join(map(str, part.children))

    if tree.data == "scheduled":
        before, after, _, number, _ = tree.children
        return "scheduled", (text(before), text(after)), str(number)
    return "alternate", tuple(map(text, tree.children)), ""


def _close(prompt: str, opened: _Open, end: int, marker: str, timing: _Timing) -> _Group | None:
    """The group ``prompt[opened.pos:end]`` once its closer is seen; None when it makes the prompt unparsable
    (an invalid group with a ``|`` directly inside). Round groups and square groups without ``:`` or ``|`` are
    emphasis, literal text at this stage; the grammar decides the others."""
    pieces, pos = [], opened.pos
    for child in opened.children:
        pieces += [prompt[pos:child.start], marker]
        pos = child.end
    level = "".join(pieces) + prompt[pos:end]
    child_items = [child.items for child in opened.children]
    items = _interleave(level, marker, iter(child_items))
    if not all(child.valid for child in opened.children):
        valid = False
    elif opened.char == "(":
        valid = opened.pipes == 0 and opened.colons <= 1
    elif opened.colons == 0 and opened.pipes == 0:
        valid = True
    else:
        shape = _group_shape(level)
        valid = shape is not None
        if shape is not None:
            kind, texts, number = shape
            children = iter(child_items)  # placeholders in text order: before, after; or option by option
            parts = tuple(_interleave(text, marker, children) for text in texts)
            items = (_Scheduled(parts[0], parts[1], timing.end_step(number)) if kind == "scheduled"
                     else _Alternate(parts),)
    if not valid and opened.pipes:
        return None
    return _Group(opened.pos, end, items, valid)


def _abandon(stack: list[_Open], roots: list[_Group]) -> bool:
    """Openers that will never close: their brackets are literal and their groups move to the top level. False
    when one holds a ``|`` directly, which then no construct can accept."""
    for opened in stack:
        if opened.pipes:
            return False
        roots.extend(opened.children)
    stack.clear()
    return True


def _placeholder(prompt: str) -> str | None:
    """A private-use character absent from ``prompt`` (plain text to the grammar)."""
    used = set(prompt)
    for block in (range(0xE000, 0xF900), range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE)):
        for code in block:
            if chr(code) not in used:
                return chr(code)
    return None


def _parse(prompt: str, timing: _Timing) -> tuple | None:
    """The prompt as items, or None when A1111's grammar cannot parse it."""
    marker = _placeholder(prompt)
    if marker is None:
        return None
    stack: list[_Open] = []
    roots: list[_Group] = []
    pos = 0
    while pos < len(prompt):
        char = prompt[pos]
        if char == "\\":
            if pos + 1 == len(prompt) or prompt[pos + 1] == "\n":  # an escape needs a character ('.' is not '\n')
                return None
            pos += 1
        elif char in "([":
            stack.append(_Open(pos, char))
        elif char in ")]":
            if stack and _CLOSER[stack[-1].char] == char:
                group = _close(prompt, stack.pop(), pos + 1, marker, timing)
                if group is None:
                    return None
                (stack[-1].children if stack else roots).append(group)
            elif stack and not _abandon(stack, roots):  # a wrong closer: nothing open can be valid any more
                return None
        elif char == ":" and stack:
            stack[-1].colons += 1
        elif char == "|":
            if not stack:
                return None
            stack[-1].pipes += 1
        pos += 1
    if not _abandon(stack, roots):
        return None
    items, pos = [], 0
    for group in roots:
        items += [prompt[pos:group.start], group.items]
        pos = group.end
    return (*items, prompt[pos:])


def _boundaries(items: tuple, steps: int) -> list[int]:
    """The steps at which the text may change: ``steps``, each schedule's step if ≥ 1, and every step when there
    is an alternation — looking into both sides of every construct, as A1111 does."""
    found = {steps}
    stack = [iter(items)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif isinstance(item, tuple):
            stack.append(iter(item))
        elif isinstance(item, _Scheduled):
            if item.when >= 1:
                found.add(int(item.when))
            stack.append(iter((item.before, item.after)))
        elif isinstance(item, _Alternate):
            found.update(range(1, steps + 1))
            stack.append(iter(item.options))
    return sorted(found)


def _render(items: tuple, step: int) -> str:
    """The text at ``step`` (with an explicit stack, so nesting depth is not limited)."""
    out: list[str] = []
    stack = [iter(items)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif isinstance(item, str):
            out.append(item)
        elif isinstance(item, tuple):
            stack.append(iter(item))
        elif isinstance(item, _Scheduled):
            stack.append(iter(item.before if step <= item.when else item.after))
        else:
            stack.append(iter(item.options[(step - 1) % len(item.options)]))
    return "".join(out)


def _schedule(prompt: str, timing: _Timing) -> list[list]:
    if "[" not in prompt:  # no construct possible: the same text at every step, parsable or not
        return [[timing.steps, prompt]]
    items = _parse(prompt, timing)
    if items is None:
        log.debug("prompt does not parse; used as-is for all steps: %.200r", prompt)
        return [[timing.steps, prompt]]
    return [[step, _render(items, step)] for step in _boundaries(items, timing.steps)]


def get_learned_conditioning_prompt_schedules(prompts: list[str], base_steps: int, hires_steps: int | None = None,
                                              use_old_scheduling: bool = False) -> list[list[list]]:
    """For each prompt its schedule ``[[end_at_step, text], ...]``, sorted by step, the last entry ending at the
    pass's step count. With ``hires_steps`` it is the hires pass (integers count from ``base_steps``, fractions
    from 1.0). ``use_old_scheduling`` is A1111's "Old prompt editing timelines": ``N < 1`` is a fraction, no
    hires offsets, and the base step count even for hires. Identical prompts are parsed once."""
    timing = _timing(base_steps, hires_steps, use_old_scheduling)
    unique = {prompt: _schedule(prompt, timing) for prompt in dict.fromkeys(prompts)}
    return [[list(entry) for entry in unique[prompt]] for prompt in prompts]


def schedule_for_step(schedule: Sequence[Sequence], step: int) -> str:
    """The text of the first entry with ``step <= end_at_step``; the last entry's when ``step`` is past them all
    (A1111's ``reconstruct_cond_batch`` takes the same first match, but falls back to the *first* entry)."""
    for end_at_step, text in schedule:
        if step <= end_at_step:
            return text
    return schedule[-1][1] if schedule else ""


_ATTENTION_TOKEN = re.compile(r"""
      \\(?P<escaped>[()\[\]\\])             # \( \) \[ \] \\ : that character
    | (?P<backslash>\\)                     # any other backslash: dropped
    | (?P<open>[(\[])
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)      # closes a round bracket with an explicit weight
    | (?P<close>[)\]])
    | [^\\()\[\]:]+                         # text
    | :                                     # a colon that closes nothing: text
""", re.VERBOSE)
_BREAK_WORD = re.compile(r"\bBREAK\b")
_ROUND = 1.1
_SQUARE = 1 / 1.1


def _clamp(weight: float) -> float:
    """Weights stay finite (A1111's overflow to inf, then nan, would poison the embeddings)."""
    return max(-_FLOAT_MAX, min(_FLOAT_MAX, weight))


def _scale(entries: list[list], start: int, factor: float) -> None:
    for entry in entries[start:]:
        entry[1] = _clamp(entry[1] * factor)


def _split_breaks(text: str) -> list[str]:
    """``re.split(r"\\s*\\bBREAK\\b\\s*", text)`` in linear time (that regex retries a long run of spaces from each
    of its positions: 14 s for 20 000 spaces)."""
    parts, pos = [], 0
    for match in _BREAK_WORD.finditer(text):
        start, end = match.span()
        while start > pos and text[start - 1].isspace():  # str.isspace is exactly re's \s
            start -= 1
        while end < len(text) and text[end].isspace():
            end += 1
        parts.append(text[pos:start])
        pos = end
    return [*parts, text[pos:]]


def _explicit_weight(text: str | None) -> float | None:
    try:
        return None if text is None else _clamp(float(text))
    except ValueError:  # "1.2.3" or "." (A1111 raises): the token stays literal text
        return None


def parse_prompt_attention(text: str) -> list[list]:
    """``[[text, weight], ...]`` by A1111's rules: ``(x)`` ×1.1, ``(x:w)`` ×w, ``[x]`` ÷1.1, compounding;
    ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal and any other ``\\`` vanishes; unmatched closers and ``:``
    are text; unclosed brackets apply to everything after them; each ``BREAK`` gives ``["BREAK", -1]`` and eats
    the whitespace around it (inside brackets its weight is scaled like any other); runs of equal weight are
    merged; nothing gives ``[["", 1.0]]``."""
    entries: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []
    for match in _ATTENTION_TOKEN.finditer(text):
        weight = _explicit_weight(match["weight"])
        if match["escaped"] is not None or match["backslash"] is not None:
            entries.append([match["escaped"] or "", 1.0])
        elif match["open"] == "(":
            rounds.append(len(entries))
        elif match["open"] == "[":
            squares.append(len(entries))
        elif weight is not None and rounds:
            _scale(entries, rounds.pop(), weight)
        elif match["close"] == ")" and rounds:
            _scale(entries, rounds.pop(), _ROUND)
        elif match["close"] == "]" and squares:
            _scale(entries, squares.pop(), _SQUARE)
        else:
            for index, part in enumerate(_split_breaks(match[0])):
                entries += [["BREAK", -1], [part, 1.0]] if index else [[part, 1.0]]
    for start in rounds:
        _scale(entries, start, _ROUND)
    for start in squares:
        _scale(entries, start, _SQUARE)
    merged = entries[:1] or [["", 1.0]]
    for entry in entries[1:]:
        if entry[1] == merged[-1][1]:
            merged[-1][0] += entry[0]
        else:
            merged.append(entry)
    return merged


_AND = re.compile(r"\bAND\b")
_AND_WEIGHT = re.compile(r"[-+]?(?:\d+\.?|\d*\.\d+)")


def _split_weight(subprompt: str) -> tuple[str, str | None]:
    """A1111's ``^((?:\\s|.)*?)(?:\\s*:\\s*(NUMBER))?\\s*$`` in linear time (the regex is quadratic in a run of
    spaces): the text without trailing whitespace, and the number after the last ``:`` when only whitespace
    surrounds it, in which case the text also loses that ``:`` and the whitespace before it."""
    stripped = subprompt.rstrip()  # str.isspace is exactly re's \s
    colon = stripped.rfind(":")
    number = stripped[colon + 1:].lstrip()
    if colon >= 0 and _AND_WEIGHT.fullmatch(number):
        return stripped[:colon].rstrip(), number
    return stripped, None


def get_multicond_prompt_list(prompts: list[str]) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """Split each prompt on ``AND`` (case-sensitive, whole word) into sub-prompts with an optional trailing
    ``:weight`` (default 1.0). Returns ``(res_indexes, prompt_flat_list, prompt_indexes)``: per prompt its
    ``(index into prompt_flat_list, weight)`` pairs; the distinct sub-prompt texts in first-seen order; and text →
    index. A text keeps its leading whitespace and loses the trailing one; equal texts share an index."""
    res_indexes: list[list[tuple[int, float]]] = []
    prompt_flat_list: list[str] = []
    prompt_indexes: dict[str, int] = {}
    for prompt in prompts:
        indexes: list[tuple[int, float]] = []
        for subprompt in _AND.split(prompt):
            text, weight = _split_weight(subprompt)
            if text not in prompt_indexes:
                prompt_indexes[text] = len(prompt_flat_list)
                prompt_flat_list.append(text)
            indexes.append((prompt_indexes[text], _clamp(float(weight)) if weight is not None else 1.0))
        res_indexes.append(indexes)
    return res_indexes, prompt_flat_list, prompt_indexes
