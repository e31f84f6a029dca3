"""Extracting final answers from solutions and from the task LLM's free text (math and QA tasks)."""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)")
# A number: 1,234,567 (comma groups of three), -3, 2.5, .5, 3/4, -1.5/2
_NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:/\d+(?:\.\d+)?)?(?![\d])")


def last_boxed(text: str) -> str | None:
    r"""The content of the last `\boxed{...}` (or `\fbox{...}`) in `text`, braces balanced (nested
    braces are kept: `\boxed{\frac{1}{2}}` gives `\frac{1}{2}`); `\boxed 5` gives `5`. None if there is
    no complete one."""
    for m in reversed(list(_BOXED.finditer(text))):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{" and text[j - 1] != "\\":
                    depth += 1
                elif text[j] == "}" and text[j - 1] != "\\":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
            continue  # unbalanced: try an earlier one
        if i > m.end():  # "\boxed 5": the token after the space
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                return token.group(0)
    return None


def last_number(text: str) -> str | None:
    """The last number in `text` with thousands separators removed (`1,234` -> `1234`), keeping a
    sign, decimals and a fraction (`-3`, `2.5`, `3/4`); None if there is none."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return matches[-1].replace(",", "")


def gsm8k_final_answer(solution: str) -> str | None:
    """GSM8K's final answer: the text after the last `####`, commas removed (`#### 1,200` -> `1200`)."""
    if "####" not in solution:
        return None
    answer = solution.rsplit("####", 1)[1].strip()
    answer = re.sub(r"(?<=\d),(?=\d)", "", answer)
    return answer or None


def normalize_integer(answer: str) -> str:
    """Zero-padded integers (AIME's `025`) as plain integers (`25`); anything else unchanged."""
    s = answer.strip()
    return str(int(s)) if re.fullmatch(r"-?\d+", s) else s


def final_answer(value: object) -> str | None:
    r"""A math gold from a data field: a GSM8K solution (`#### 72`) gives its final answer, a solution
    with `\boxed{}` its last boxed content, anything else its string form; integers normalized."""
    if value is None:
        return None
    text = str(value).strip()
    if "####" in text:
        answer = gsm8k_final_answer(text)
    elif _BOXED.search(text):
        answer = last_boxed(text)
    else:
        answer = text
    return normalize_integer(answer) if answer else None


def parse_math(answer: str) -> str | None:
    r"""The task LLM's final answer: the last `\boxed{}` if there is one, else the last number."""
    boxed = last_boxed(answer)
    if boxed is not None:
        return boxed
    return last_number(answer)


def parse_short_answer(answer: str) -> str:
    """A QA answer: the first non-empty line, stripped, without a trailing period ("" if none)."""
    for line in answer.strip().splitlines():
        line = line.strip()
        if line:
            return line[:-1].rstrip() if line.endswith(".") else line
    return ""
