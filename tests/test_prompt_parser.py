"""Tests for modules/prompt_parser.py: A1111 1.10.1's prompt syntax.

Expected values come from three independent places, never from running the code under test:
* the doctests in A1111's ``modules/prompt_parser.py`` (v1.10.1), copied here as data;
* the rules in reference §5.2–5.4 and §12 items 9–10, worked out by hand;
* A1111's own lark grammar (reference §5.2) run over the whole prompt, as A1111 does, with a small tree walk of
  ours: the oracle for the differential property test.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import subprocess
import sys
from pathlib import Path

import lark
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modules import prompt_parser
from modules.prompt_parser import (
    get_learned_conditioning_prompt_schedules,
    get_multicond_prompt_list,
    parse_prompt_attention,
    schedule_for_step,
)

REPO = Path(__file__).resolve().parent.parent
MAX_FLOAT = sys.float_info.max


def schedule(prompt: str, base_steps: int = 10, hires_steps: int | None = None, old: bool = False) -> list[list]:
    return get_learned_conditioning_prompt_schedules([prompt], base_steps, hires_steps, old)[0]


def alternating(first: str, second: str, steps: int = 10) -> list[list]:
    return [[step, first if step % 2 else second] for step in range(1, steps + 1)]


# ------------------------------------------------------------------------------------------- A1111 doctests

A1111_SCHEDULE_DOCTESTS = [  # g = lambda p: get_learned_conditioning_prompt_schedules([p], 10)[0]
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", alternating("a", "(b:1.1)")),
    ("[fe|]male", alternating("female", "male")),
    ("[fe|||]male", [[step, "female" if step % 4 == 1 else "male"] for step in range(1, 11)]),
]

A1111_HIRES_DOCTESTS = [  # g = lambda p: get_learned_conditioning_prompt_schedules([p], 10, 10)[0]
    ("a [b:.5] c", [[10, "a b c"]]),
    ("a [b:1.5] c", [[5, "a  c"], [10, "a b c"]]),
]

# A1111's docstring also claims g("a [{b|d{:.5] c") == [[5, 'a  c'], [10, 'a {b|d{ c']] ("not handling this right
# now"). That line predates `|` being excluded from plain text: v1.10.1's own grammar cannot parse the prompt
# (test_stale_a1111_doctest_is_literal checks that), so A1111 really uses it as-is.
STALE_DOCTEST = "a [{b|d{:.5] c"

A1111_ATTENTION_DOCTESTS = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_SCHEDULE_DOCTESTS)
def test_a1111_schedule_doctests(prompt: str, expected: list[list]) -> None:
    assert schedule(prompt) == expected


@pytest.mark.parametrize(("prompt", "expected"), A1111_HIRES_DOCTESTS)
def test_a1111_hires_doctests(prompt: str, expected: list[list]) -> None:
    assert schedule(prompt, 10, 10) == expected


@pytest.mark.parametrize(("text", "expected"), A1111_ATTENTION_DOCTESTS)
def test_a1111_attention_doctests(text: str, expected: list[list]) -> None:
    assert parse_prompt_attention(text) == expected


def test_stale_a1111_doctest_is_literal() -> None:
    with pytest.raises(lark.exceptions.LarkError):
        _a1111_parser().parse(STALE_DOCTEST)
    assert schedule(STALE_DOCTEST) == [[10, STALE_DOCTEST]]


# ------------------------------------------------------------------------------- scheduling rules (§5.2, §12)

SCHEDULE_CASES = [
    # (prompt, base_steps, hires_steps, old scheduling, expected)
    pytest.param("[a:b:3.0]", 10, None, False, [[10, "a"]], id="3.0-is-300%-never-switches"),
    pytest.param("[a:b:1.0]", 10, None, False, [[10, "a"]], id="1.0-never-switches"),
    pytest.param("[a:b:0]", 10, None, False, [[10, "b"]], id="0-is-b-from-the-start"),
    pytest.param("[a:b:0.0]", 10, None, False, [[10, "b"]], id="0.0"),
    pytest.param("[a:b:-1]", 10, None, False, [[10, "b"]], id="negative"),
    pytest.param("[a:b:9]", 10, None, False, [[9, "a"], [10, "b"]], id="9-of-10"),
    pytest.param("[a:b:10]", 10, None, False, [[10, "a"]], id="10-of-10"),
    pytest.param("[a:b:11]", 10, None, False, [[10, "a"]], id="clamped"),
    pytest.param("[a:b:99999999999999999999]", 10, None, False, [[10, "a"]], id="huge-int"),
    pytest.param("[a:b:1e1]", 10, None, False, [[10, "a"]], id="exponent-without-dot-is-absolute"),
    pytest.param("[a:b:1e-1]", 10, None, False, [[10, "b"]], id="1e-1-absolute-truncates-to-0"),
    pytest.param("[a:b: 5 ]", 10, None, False, [[5, "a"], [10, "b"]], id="spaces-around-number"),
    pytest.param("[a:b:+5]", 10, None, False, [[5, "a"], [10, "b"]], id="signed"),
    pytest.param("[a:5]", 10, None, False, [[5, ""], [10, "a"]], id="add-after"),
    pytest.param("[a::5]", 10, None, False, [[5, "a"], [10, ""]], id="remove-after"),
    pytest.param("[a:[b:c:0.8]:0.2]", 10, None, False, [[2, "a"], [8, "b"], [10, "c"]], id="nested-fractions"),
    pytest.param("[a:b:15]", 10, 20, False, [[5, "a"], [20, "b"]], id="hires-int-offset"),
    pytest.param("[a:b:1.5]", 10, 20, False, [[10, "a"], [20, "b"]], id="hires-fraction-offset"),
    pytest.param("[a:b:5]", 10, 20, False, [[20, "b"]], id="hires-int-before-hires"),
    pytest.param("[a:b:0.5]", 10, 20, False, [[20, "b"]], id="hires-fraction-before-hires"),
    pytest.param("[a:b:0.5]", 10, None, True, [[5, "a"], [10, "b"]], id="old-fraction"),
    pytest.param("[a:b:3.0]", 10, None, True, [[3, "a"], [10, "b"]], id="old-3.0-is-step-3"),
    pytest.param("[a:b:1.0]", 10, None, True, [[1, "a"], [10, "b"]], id="old-1.0-is-step-1"),
    pytest.param("[a:b:15]", 10, 20, True, [[10, "a"]], id="old-ignores-hires"),
    pytest.param("[a:b:0.5]", 10, 20, True, [[5, "a"], [10, "b"]], id="old-hires-uses-base-steps"),
    pytest.param("[a|b|c]", 4, None, False, [[1, "a"], [2, "b"], [3, "c"], [4, "a"]], id="alternation"),
    pytest.param("[|a]", 4, None, False, [[1, ""], [2, "a"], [3, ""], [4, "a"]], id="alternation-empty-first"),
    pytest.param("[a||]", 3, None, False, [[1, "a"], [2, ""], [3, ""]], id="alternation-empty-options"),
    pytest.param("[[a:b:2]|c]", 4, None, False, [[1, "a"], [2, "c"], [3, "b"], [4, "c"]], id="schedule-in-alternation"),
    pytest.param("[a:b:2]\n[c|d]", 3, None, False, [[1, "a\nc"], [2, "a\nd"], [3, "b\nc"]], id="two-constructs"),
    pytest.param("a | b [c:d:2]", 10, None, False, [[10, "a | b [c:d:2]"]], id="stray-pipe-disables-all"),
    pytest.param("(a|b) [c:d:2]", 10, None, False, [[10, "(a|b) [c:d:2]"]], id="pipe-in-round-brackets"),
    pytest.param("a \\| b [c:d:2]", 10, None, False, [[2, "a \\| b c"], [10, "a \\| b d"]], id="escaped-pipe"),
    pytest.param("(a|b [c:d:2]", 10, None, False, [[10, "(a|b [c:d:2]"]], id="pipe-in-unclosed-round"),
    pytest.param("[a|b [c:d:2]", 10, None, False, [[10, "[a|b [c:d:2]"]], id="pipe-in-unclosed-square"),
    pytest.param("(a|b] [c:d:2]", 10, None, False, [[10, "(a|b] [c:d:2]"]], id="pipe-before-wrong-closer"),
    pytest.param("x) [a|b] (y", 2, None, False, [[1, "x) a (y"], [2, "x) b (y"]], id="strays-apart"),
    pytest.param("[x:(a:b):3]", 10, None, False, [[3, "x"], [10, "(a:b)"]], id="weighted-group-inside"),
    pytest.param("[x:(a:b:c):3]", 10, None, False, [[10, "[x:(a:b:c):3]"]], id="invalid-group-inside"),
    pytest.param("[x:[a:b]:3]", 10, None, False, [[10, "[x:[a:b]:3]"]], id="invalid-square-inside"),
    pytest.param("\\[a:b:2]", 10, None, False, [[10, "\\[a:b:2]"]], id="escaped-bracket"),
    pytest.param("[a:b:2] \\", 10, None, False, [[10, "[a:b:2] \\"]], id="trailing-backslash-fails"),
    pytest.param("[a:b:2]\\\n", 10, None, False, [[10, "[a:b:2]\\\n"]], id="backslash-newline-fails"),
    pytest.param("[a:b]", 10, None, False, [[10, "[a:b]"]], id="no-number-is-literal"),
    pytest.param("(x:1.2) [a:b:2] ((y))", 10, None, False, [[2, "(x:1.2) a ((y))"], [10, "(x:1.2) b ((y))"]],
                 id="emphasis-re-emitted"),
    pytest.param("[a:b:2] BREAK c", 10, None, False, [[2, "a BREAK c"], [10, "b BREAK c"]], id="break-passes"),
    pytest.param("[猫:犬:2]", 10, None, False, [[2, "猫"], [10, "犬"]], id="unicode"),
    pytest.param("[a:b:2](", 10, None, False, [[2, "a("], [10, "b("]], id="stray-after"),
    pytest.param("[a:b:.5]", 0, None, False, [[0, "a"]], id="zero-steps"),
    pytest.param("[a|b]", 0, None, False, [[0, "b"]], id="zero-steps-alternation"),
    pytest.param("[a:b:2]", 10, 0, False, [[0, "b"]], id="zero-hires-steps"),
    # Decisions where A1111 raises (OverflowError) or depends on the hash seed (module docstring):
    pytest.param("[a:b:1e400]", 10, None, False, [[10, "a"]], id="infinite-never-switches"),
    pytest.param("[a:b:-1e400]", 10, None, False, [[10, "b"]], id="minus-infinite"),
    pytest.param("[a:b:1.0e400]", 0, None, False, [[0, "a"]], id="infinite-fraction-of-0-steps"),
    pytest.param("[a:3]((", 10, None, False, [[3, "(("], [10, "a(("]], id="stray-run-touching-construct"),
]


@pytest.mark.parametrize(("prompt", "base", "hires", "old", "expected"), SCHEDULE_CASES)
def test_schedules(prompt: str, base: int, hires: int | None, old: bool, expected: list[list]) -> None:
    assert schedule(prompt, base, hires, old) == expected


def test_a_schedule_uses_a_for_n_plus_one_denoiser_calls() -> None:
    """§5.1/§12.10: `[a:10]`-style switch at 20 steps: step counter 0..10 (11 calls) is `a`, then `b`."""
    entries = schedule("[a:b:10]", 20)
    assert [schedule_for_step(entries, step) for step in range(20)] == ["a"] * 11 + ["b"] * 9


def test_identical_prompts_share_one_schedule_by_value_not_by_object() -> None:
    first, second, third = get_learned_conditioning_prompt_schedules(["[a:b:2]", "x", "[a:b:2]"], 10)
    assert first == third == [[2, "a"], [10, "b"]] and second == [[10, "x"]]
    first[0][1] = "changed"
    assert third[0][1] == "a"


def test_empty_prompt_list() -> None:
    assert get_learned_conditioning_prompt_schedules([], 10) == []


@pytest.mark.parametrize(("step", "expected"), [(-1, "a"), (0, "a"), (3, "a"), (4, "b"), (10, "b"), (11, "b")])
def test_schedule_for_step(step: int, expected: str) -> None:
    assert schedule_for_step([[3, "a"], [10, "b"]], step) == expected


def test_schedule_for_step_accepts_tuples_and_empty() -> None:
    assert schedule_for_step([(5, "x")], 99) == "x"
    assert schedule_for_step([], 0) == ""


# ------------------------------------------------------------------------------ attention weights (§5.4, §12.9)

ATTENTION_CASES = [
    pytest.param("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]], id="break"),
    pytest.param("a\nBREAK\nb", [["a", 1.0], ["BREAK", -1], ["b", 1.0]], id="break-eats-newlines"),
    pytest.param("BREAK", [["", 1.0], ["BREAK", -1], ["", 1.0]], id="break-alone"),
    pytest.param("(a BREAK b)", [["a", 1.1], ["BREAK", -1.1], ["b", 1.1]], id="break-in-brackets-is--1.1"),
    pytest.param("(BREAK:-1)", [["", -1.0], ["BREAK", 1.0], ["", -1.0]], id="break-weight-scaled"),
    pytest.param("(a BREAK b:0)", [["aBREAKb", 0.0]], id="break-merged-at-weight-0"),
    pytest.param("aBREAK b", [["aBREAK b", 1.0]], id="break-needs-word-boundary"),
    pytest.param("a break b", [["a break b", 1.0]], id="break-is-case-sensitive"),
    pytest.param("\\(a\\)", [["(a)", 1.0]], id="escaped-round"),
    pytest.param("\\\\", [["\\", 1.0]], id="escaped-backslash"),
    pytest.param("a\\b", [["ab", 1.0]], id="lone-backslash-vanishes"),
    pytest.param("((a))", [["a", 1.2100000000000002]], id="compounding"),
    pytest.param("[a]", [["a", 0.9090909090909091]], id="square"),
    pytest.param("[[a]]", [["a", 0.8264462809917354]], id="square-twice"),
    pytest.param("([a]:1.5)", [["a", 1.3636363636363635]], id="square-inside-weight"),
    pytest.param("(a:0)", [["a", 0.0]], id="weight-0"),
    pytest.param("(a:-1)", [["a", -1.0]], id="negative-weight"),
    pytest.param("(a: 1.5 )", [["a", 1.5]], id="spaces-around-weight"),
    pytest.param("(a:.5)", [["a", 0.5]], id="weight-dot-5"),
    pytest.param("(a:+2)", [["a", 2.0]], id="weight-plus"),
    pytest.param("a)", [["a)", 1.0]], id="unmatched-round-closer"),
    pytest.param("a]", [["a]", 1.0]], id="unmatched-square-closer"),
    pytest.param(":1.5)", [[":1.5)", 1.0]], id="weight-closer-without-opener"),
    pytest.param("a:b", [["a:b", 1.0]], id="colon-is-text"),
    pytest.param("(a:b)", [["a:b", 1.1]], id="colon-without-number"),
    pytest.param("(a:1.5", [["a:1.5", 1.1]], id="weight-needs-closer"),
    pytest.param("[unbalanced", [["unbalanced", 0.9090909090909091]], id="unclosed-square"),
    pytest.param("(a[b", [["a", 1.1], ["b", 1.0]], id="unclosed-round-then-square"),
    pytest.param("", [["", 1.0]], id="empty"),
    pytest.param("(a:1.1)(b)", [["ab", 1.1]], id="equal-weights-merge"),
    pytest.param("(a:1.2)x(b:1.2)", [["a", 1.2], ["x", 1.0], ["b", 1.2]], id="only-adjacent-merge"),
    pytest.param("<lora:x:0.5> {a|b}", [["<lora:x:0.5> {a|b}", 1.0]], id="other-syntax-is-text"),
    # Decisions where A1111 raises (ValueError) or overflows:
    pytest.param("(a:1.2.3)", [["a:1.2.3)", 1.1]], id="bad-number-is-text"),
    pytest.param("(a:.)", [["a:.)", 1.1]], id="dot-is-text"),
    pytest.param("(a:" + "9" * 400 + ")", [["a", MAX_FLOAT]], id="overflow-clamped"),
    pytest.param("((a:" + "9" * 400 + "):-" + "9" * 400 + ")", [["a", -MAX_FLOAT]], id="product-clamped"),
]


@pytest.mark.parametrize(("text", "expected"), ATTENTION_CASES)
def test_attention(text: str, expected: list[list]) -> None:
    result = parse_prompt_attention(text)
    assert result == expected
    assert [type(weight) for _, weight in result] == [type(weight) for _, weight in expected]  # BREAK's -1 is int


# --------------------------------------------------------------------------------------------------- AND (§5.3)

AND_CASES = [
    pytest.param(["a AND b"], [[(0, 1.0), (1, 1.0)]], ["a", " b"], id="split"),
    pytest.param(["a :0.5 AND b:2"], [[(0, 0.5), (1, 2.0)]], ["a", " b"], id="weights"),
    pytest.param(["a: 1.5 \n"], [[(0, 1.5)]], ["a"], id="weight-with-spaces"),
    pytest.param(["a:-.5"], [[(0, -0.5)]], ["a"], id="signed-fraction"),
    pytest.param(["a:3."], [[(0, 3.0)]], ["a"], id="trailing-dot"),
    pytest.param(["a:1.5 b"], [[(0, 1.0)]], ["a:1.5 b"], id="weight-must-be-last"),
    pytest.param(["a:b"], [[(0, 1.0)]], ["a:b"], id="colon-text"),
    pytest.param(["a::2"], [[(0, 2.0)]], ["a:"], id="last-colon"),
    pytest.param(["(a:1.2) AND b"], [[(0, 1.0), (1, 1.0)]], ["(a:1.2)", " b"], id="emphasis-weight-is-not-and-weight"),
    pytest.param(["a and b"], [[(0, 1.0)]], ["a and b"], id="case-sensitive"),
    pytest.param(["ANDROID AND"], [[(0, 1.0), (1, 1.0)]], ["ANDROID", ""], id="whole-word"),
    pytest.param(["a AND  b  "], [[(0, 1.0), (1, 1.0)]], ["a", "  b"], id="leading-space-kept"),
    pytest.param(["AND"], [[(0, 1.0), (0, 1.0)]], [""], id="empty-parts-share"),
    pytest.param(["a AND a", "a", "b"], [[(0, 1.0), (1, 1.0)], [(0, 1.0)], [(2, 1.0)]], ["a", " a", "b"],
                 id="identical-texts-share"),
    pytest.param(["x :2 AND x"], [[(0, 2.0), (1, 1.0)]], ["x", " x"], id="same-word-different-text"),
    pytest.param(["a:" + "9" * 400], [[(0, MAX_FLOAT)]], ["a"], id="overflow-clamped"),
]


@pytest.mark.parametrize(("prompts", "indexes", "flat"), AND_CASES)
def test_and(prompts: list[str], indexes: list, flat: list[str]) -> None:
    res_indexes, prompt_flat_list, prompt_indexes = get_multicond_prompt_list(prompts)
    assert res_indexes == indexes
    assert prompt_flat_list == flat
    assert prompt_indexes == {text: index for index, text in enumerate(flat)}


# ------------------------------------------------------------- the oracle: A1111's grammar over the whole prompt

A1111_GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""


@functools.cache
def _a1111_parser() -> lark.Lark:
    return lark.Lark(A1111_GRAMMAR)


def oracle_schedule(prompt: str, base_steps: int, hires_steps: int | None = None, old: bool = False) -> list[list]:
    """A1111's schedule semantics (§5.2) over a whole-prompt parse with A1111's grammar (finite numbers only)."""
    hires = hires_steps is not None and not old
    steps = hires_steps if hires else base_steps
    try:
        tree = _a1111_parser().parse(prompt)
    except lark.exceptions.LarkError:
        return [[steps, prompt]]

    def end_of(number: lark.Token) -> int:
        value = float(number)
        if old:
            value = value * steps if value < 1 else value
        elif "." in number:
            value = (value - (1.0 if hires else 0.0)) * steps
        else:
            value -= base_steps if hires else 0
        return min(steps, int(value))

    def text_at(node: lark.Tree | lark.Token | None, step: int) -> str:
        if node is None or isinstance(node, lark.Token):
            return str(node or "")
        if node.data == "scheduled":
            before, after, _, number, _ = node.children
            return text_at(before if step <= end_of(number) else after, step)
        if node.data == "alternate":
            return text_at(node.children[(step - 1) % len(node.children)], step)
        return "".join(text_at(child, step) for child in node.children)

    ends = {steps}
    for sub in tree.iter_subtrees():
        if sub.data == "scheduled" and end_of(sub.children[3]) >= 1:
            ends.add(end_of(sub.children[3]))
        elif sub.data == "alternate":
            ends.update(range(1, steps + 1))
    return [[end, text_at(tree, end)] for end in sorted(ends)]


@pytest.mark.parametrize(("prompt", "expected"), A1111_SCHEDULE_DOCTESTS)
def test_oracle_passes_the_a1111_doctests(prompt: str, expected: list[list]) -> None:
    assert oracle_schedule(prompt, 10) == expected


# ---------------------------------------------------------------------------------------- property tests

_WORDS = st.sampled_from(["a", "b c", " ", "x\\:y", "\\[", "1", "\\\\", "0.5", " e ", "猫", "BREAK", "AND", "\\|"])
_NUMBERS = st.sampled_from(["1", "2", " 0.5", "3 ", "-1", ".9", "0", "15", "1.5", "+2", "1e1", "2.", "0.0", " 7 "])
_STRAYS = st.sampled_from(["(", "((", ")", "))", ":", "::", "[", "]", "]]", ":(", "(:", "|"])
_SEPARATORS = st.sampled_from([" ", ", ", "w", " x "])
_TIMINGS = st.sampled_from([(10, None, False), (10, 20, False), (10, None, True), (4, None, False), (6, 3, False)])


def _constructs(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    body = st.lists(inner, max_size=3).map("".join)
    return st.one_of(
        st.builds("({})".format, body), st.builds("({}:{})".format, body, body), st.builds("[{}]".format, body),
        st.builds("[{}:{}:{}]".format, body, body, _NUMBERS), st.builds("[{}:{}]".format, body, _NUMBERS),
        st.builds("[{}::{}]".format, body, _NUMBERS),
        st.lists(body, min_size=2, max_size=3).map(lambda options: "[" + "|".join(options) + "]"),
    )


WELL_FORMED = st.recursive(_WORDS, _constructs, max_leaves=6)
# Stray pieces never touch a construct: where they do, A1111's result depends on its hash seed (module docstring).
SEPARATED_PROMPTS = st.lists(st.tuples(st.one_of(WELL_FORMED, WELL_FORMED, _STRAYS), _SEPARATORS),
                             min_size=1, max_size=4).map(lambda pairs: "".join(a + b for a, b in pairs))
TOKEN_SOUP = st.lists(st.sampled_from([
    "[", "]", "(", ")", "{", "}", ":", "|", "<", ">", ",", ".", "\\", " ", "\n", " AND ", "BREAK", "0", "1", "5",
    ".5", "-", "1e400", "99999999999999999999", "nan", "inf", "a", "cat", "é", "猫", "\u00a0", "\ue000",
]), max_size=40).map("".join)
ANY_TEXT = st.one_of(st.text(max_size=60), TOKEN_SOUP, SEPARATED_PROMPTS)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=SEPARATED_PROMPTS, timing=_TIMINGS)
def test_schedules_match_a1111_grammar_parsed_whole(prompt: str, timing: tuple) -> None:
    assert schedule(prompt, *timing) == oracle_schedule(prompt, *timing)


def _check_schedule(entries: list[list], prompt: str, steps: int) -> None:
    assert entries and entries[-1][0] == steps
    ends = [end for end, _ in entries]
    assert all(type(end) is int for end in ends) and ends == sorted(set(ends))
    assert all(isinstance(text, str) for _, text in entries)
    if "[" not in prompt:
        assert entries == [[steps, prompt]]


@settings(max_examples=150, deadline=None)
@given(prompt=ANY_TEXT, timing=_TIMINGS)
def test_schedules_are_total_and_well_formed(prompt: str, timing: tuple) -> None:
    base, hires, old = timing
    _check_schedule(schedule(prompt, base, hires, old), prompt, hires if hires is not None and not old else base)


def _check_attention(result: list[list]) -> None:
    assert result
    for text, weight in result:
        assert isinstance(text, str) and isinstance(weight, (int, float)) and math.isfinite(weight)
    assert all(left[1] != right[1] for left, right in itertools.pairwise(result))


@settings(max_examples=150, deadline=None)
@given(text=ANY_TEXT)
def test_attention_is_total_and_well_formed(text: str) -> None:
    result = parse_prompt_attention(text)
    _check_attention(result)
    if not re.search(r"[\\()\[\]]|BREAK", text):
        assert result == [[text, 1.0]]


def _check_multicond(prompts: list[str], result: tuple) -> None:
    res_indexes, flat, indexes = result
    assert len(res_indexes) == len(prompts) and len(set(flat)) == len(flat)
    assert indexes == {text: index for index, text in enumerate(flat)}
    for parts in res_indexes:
        assert parts and all(0 <= index < len(flat) and math.isfinite(weight) for index, weight in parts)


@settings(max_examples=150, deadline=None)
@given(prompts=st.lists(ANY_TEXT, max_size=3))
def test_multicond_is_total_and_well_formed(prompts: list[str]) -> None:
    _check_multicond(prompts, get_multicond_prompt_list(prompts))


A1111_RE_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")  # reference §5.3
A1111_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.DOTALL)  # reference §5.4


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(st.text(max_size=30), st.lists(st.sampled_from(
    [" ", "\n", "\u2003", ":", "1", ".", "-", "+", "a", "BREAK", "AND", "٣"]), max_size=12).map("".join)))
def test_linear_splitters_equal_a1111_regexes(text: str) -> None:
    assert prompt_parser._split_weight(text) == A1111_RE_WEIGHT.search(text).groups()
    assert prompt_parser._split_breaks(text) == A1111_RE_BREAK.split(text)


# ------------------------------------------------------------------------------------------- large inputs

def test_large_and_deep_inputs_do_not_raise() -> None:
    """10 000-token prompts, long whitespace runs and nesting thousands deep (A1111 crashes on the last)."""
    long_prompt = "masterpiece, (best quality:1.2), [cat:dog:0.5], [red|blue] hair, " * 800
    entries = schedule(long_prompt, 20)
    assert [end for end, _ in entries] == list(range(1, 21))
    assert entries[0][1].startswith("masterpiece, (best quality:1.2), cat, red hair, ")
    assert entries[-1][1].startswith("masterpiece, (best quality:1.2), dog, blue hair, ")
    _check_attention(parse_prompt_attention(long_prompt))
    _check_multicond([long_prompt], get_multicond_prompt_list([long_prompt + " AND x :2"]))

    spaces = "a" + " " * 20000 + "b"
    assert schedule("[" + spaces + ":2]") == [[2, ""], [10, spaces]]
    assert parse_prompt_attention(spaces + " BREAK") == [[spaces, 1.0], ["BREAK", -1], ["", 1.0]]
    assert get_multicond_prompt_list([spaces]) == ([[(0, 1.0)]], [spaces], {spaces: 0})

    depth = 3000
    assert schedule("(" * depth + "[a:b:3]" + ")" * depth) == [[3, "(" * depth + "a" + ")" * depth],
                                                                [10, "(" * depth + "b" + ")" * depth]]
    assert schedule("[" * depth + "a" + ":b:1]" * depth) == [[1, "a"], [10, "b"]]
    assert schedule("[" * depth + "a:b" + "]" * depth) == [[10, "[" * depth + "a:b" + "]" * depth]]
    assert schedule("[" * depth + "[a:b:2]") == [[2, "[" * depth + "a"], [10, "[" * depth + "b"]]
    assert parse_prompt_attention("(" * depth + "a" + ")" * depth)[0][0] == "a"
    _check_attention(parse_prompt_attention("(" * depth + "a:" + "9" * 400 + ")" * depth))


def test_importing_builds_no_parser() -> None:
    code = "import modules.prompt_parser as p; print(p._group_parser.cache_info().currsize)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "0"
