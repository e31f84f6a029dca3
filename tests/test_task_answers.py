"""Answer extraction helpers, on real rows of the shipped data and on hand-made edge cases."""

import json

import pytest

from prewrite.tasks.answers import final_answer, gsm8k_final_answer, last_boxed, last_number, parse_short_answer
from prewrite.tasks.io import PACKAGED_DATA_DIR


def rows(rel):
    with (PACKAGED_DATA_DIR / rel).open() as f:
        return [json.loads(line) for line in f]


def test_gsm8k_final_answer_on_real_rows():
    train = rows("gsm8k/train.jsonl")
    assert gsm8k_final_answer(train[0]["answer"]) == "72"
    assert gsm8k_final_answer("so $1,200 in all.\n#### 1,200") == "1200"
    assert gsm8k_final_answer("no marker") is None
    finals = [gsm8k_final_answer(r["answer"]) for r in train]
    assert all(f and "," not in f for f in finals)


def test_last_boxed_on_real_math500_solutions():
    math = rows("math500/test.jsonl")
    polar = math[0]
    assert polar["answer"] == r"\left( 3, \frac{\pi}{2} \right)"
    assert last_boxed(polar["solution"]) == polar["answer"]
    # the last \boxed{} of each solution is the stated answer on (nearly) every row
    agree = sum(last_boxed(r["solution"]) == r["answer"] for r in math)
    assert agree >= 450


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"first \boxed{1} then \boxed{ 2 }", "2"),
        (r"$\boxed{\{1, 2\}}$", r"\{1, 2\}"),
        (r"\boxed{\sqrt{\frac{a}{b}}} and \boxed{unclosed", r"\sqrt{\frac{a}{b}}"),
        (r"\fbox{7}", "7"),
        (r"\boxed 5$", "5"),
        ("no box", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 1,234.", "1234"),
        ("x = -3", "-3"),
        ("about 2.5 hours", "2.5"),
        ("she ate 3/4 of it", "3/4"),
        ("from 10 to 12, then 1,000,000 total", "1000000"),
        ("pairs 1,2", "2"),
        ("$1,234.50", "1234.50"),
        ("no digits here", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


def test_final_answer_of_a_gold_field():
    assert final_answer("025") == "25"  # AIME's zero-padded integers compare as integers
    assert final_answer(r"\frac{14}{3}") == r"\frac{14}{3}"
    assert final_answer("work...\n#### 18") == "18"
    assert final_answer(r"so it is $\boxed{42}$.") == "42"
    assert final_answer(7) == "7" and final_answer("") is None and final_answer(None) is None


def test_parse_short_answer():
    assert parse_short_answer("  Paris.  ") == "Paris"
    assert parse_short_answer("\n\nDecember 1972.\nIt was the last Apollo mission.") == "December 1972"
    assert parse_short_answer("") == ""
