"""How numbers read in every table and message: shares as percent, scores 0-100, intervals.

A metric is {"value": x, "ci": [low, high], "n": n} (emeval.metrics); a share 0-1 is shown in
percent, a mean score as it is. A missing value reads "n/a"; a missing interval is left out
rather than shown as [x, x].
"""

from __future__ import annotations

import html
import re
import reprlib

NA = "n/a"


# what makes markdown out of text on one line: a `]` that closes a link, image or link
# reference; a backslash first, so that none escapes our escapes
MARKUP = re.compile(r"\\|\](?=[(\[:])")


# a user's value quoted in a one-line error: bounded, however large or deeply nested it is
# (a YAML alias bomb expands to billions of items; a full repr would never finish)
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 2, 60, 60, 40
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 3


def shown(value) -> str:
    """repr(value), cut short: at most three items per level and two levels deep."""
    return _SHOWN.repr(value)


def md_text(value) -> str:
    """Untrusted text (a model name, a path, one line of an answer) for markdown, shown as it
    is: HTML-escaped, no link, image or heading made of it, and on one line (a line break
    could start a heading or a list)."""
    text = MARKUP.sub(lambda m: "\\" + m.group(0), " ".join(str(value).split()))
    if text.startswith("#"):
        text = "\\" + text
    return html.escape(text, quote=False)


def md_cell(lines: list[str]) -> str:
    """One markdown table cell: its lines as text (md_text), shown one under another, with no
    `|` to end the cell early."""
    return "<br>".join(md_text(line) for line in lines).replace("|", "\\|")


def fmt_value(
    value: float | None, percent: bool = True, sign: bool = True, width: int = 0, digits: int = 1
) -> str:
    """0.123 -> '12.3%' (percent; '12.3' without the sign), a score 12.34 -> '12.3'."""
    if value is None:
        return NA
    scale, unit = (100, "%" if sign else "") if percent else (1, "")
    return f"{scale * value:{width}.{digits}f}{unit}"


def fmt_points(value: float | None) -> str:
    """A share in percent points, the unit left to the header: '12.3' under 'EM rate (%)'."""
    return fmt_value(value, sign=False)


def fmt_statistic(value: float | None) -> str:
    """A statistic on its own scale (AUROC, a correlation): three decimals."""
    return NA if value is None else f"{value:.3f}"


def fmt_interval(low: float | None, high: float | None, percent: bool = True) -> str | None:
    """'[1.0, 2.5]' in the value's scale (percent points for shares); None without bounds."""
    if low is None or high is None:
        return None
    scale = 100 if percent else 1
    return f"[{scale * low:.1f}, {scale * high:.1f}]"


def fmt_estimate(
    metric: dict | None,
    percent: bool = True,
    ci: bool = True,
    no_interval: str = "",
    width: int = 0,
) -> str:
    """'12.3% [8.1, 17.9]': a metric's value and (ci) its interval; no_interval is appended
    when it has none."""
    if not metric or metric.get("value") is None:
        return NA
    text = fmt_value(metric["value"], percent, width=width)
    if not ci:
        return text
    bounds = fmt_interval(*(metric.get("ci") or [None, None]), percent)
    return f"{text} {bounds}" if bounds else text + no_interval
