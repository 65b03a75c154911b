"""Caption cleaning before tokenization, and the prompt texts the sampler adds (reference notes §3.2, §4, §5.6).

The released v1.2 DiT was trained on captions cleaned by PixArt-α/DeepFloyd-style rules, run twice (the
second pass catches what the first one exposed, e.g. a handle that only becomes `@name` once HTML tags are
gone). Prompts must go through the same cleaning or they tokenize differently from what the model saw.
The rules below reproduce that behaviour in our own order and grouping:

1. decode: URL-unquote, lower-case, strip surrounding white space;
2. markup: URLs, HTML tags and entities, @handles;
3. scripts: rare CJK blocks (strokes, katakana extensions, enclosed letters, compatibility signs, Extension A
   ideographs, Yijing symbols) are dropped; common Chinese ideographs are kept for mT5, whose vocabulary
   covers them, and dropped for T5, whose vocabulary does not;
4. punctuation: dashes and quotes unified, leftover entities, IP addresses, IDs and file names removed;
5. text repair (ftfy) and double HTML unescaping;
6. web noise: product codes, "free shipping", "click for …", page numbers, image sizes;
7. spacing and stray punctuation at the ends.

Matched on purpose, quirks included, because the released weights saw them: the end-trimming rules see
the text before its final strip (the reference discards a `strip()` there), so "worldwide, " keeps its
comma; "jpeg artifacts" loses "jpeg" to the file-type rule, also in the negative prompt; mojibake is
lower-cased before ftfy sees it, so ftfy rarely repairs it.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from urllib.parse import unquote_plus

import ftfy

# Classifier-free guidance's unconditional caption (reference notes §3.2): training drops a caption by
# replacing it with "", which tokenizes to `</s>` plus padding; it is not a null embedding.
EMPTY_CAPTION = ""

# Sampling wraps the user's prompt in quality tags and guides away from a fixed negative prompt (notes §4).
POSITIVE_TEMPLATE = "(masterpiece), (best quality), (ultra-detailed), {prompt}."
NEGATIVE_PROMPT = (
    "nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry."
)


def wrap_prompt(prompt: str) -> str:
    """The positive prompt as the reference sampler feeds it (before cleaning, which removes the brackets)."""
    return POSITIVE_TEMPLATE.format(prompt=prompt)


def clean_caption(text: str, keep_chinese: bool = True) -> str:
    """Clean a caption the way v1.2's training data was cleaned: the rules of this module, applied twice."""
    return _clean_once(_clean_once(text, keep_chinese), keep_chinese)


# --------------------------------------------------------------------------- the rules, in order of use

_Rules = tuple[tuple[re.Pattern[str], str], ...]


def _rules(*pairs: tuple[str, str]) -> _Rules:
    return tuple((re.compile(pattern), replacement) for pattern, replacement in pairs)


def _apply(rules: _Rules, text: str) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


# Rules after step 1 see lower-case text, so letter classes are written as [a-z]. The product-code rules
# run after HTML entities are decoded, which can yield upper-case letters again: those ignore case.
_SCHEME = r"\bhttps?:(?:/{1,3}|[a-z0-9%])"  # removes only the scheme; the host rule takes the rest
_HOST = r"\b[a-z0-9.\-]+\.(?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@)"  # a host on a common TLD, with its path
# The host rule runs twice: once removed, a host can expose another one right behind it.
_MARKUP = _rules((_SCHEME, ""), (_HOST, ""), (_HOST, ""))
_HANDLE = re.compile(r"@\w+\b")

# U+31C0..U+4DFF is one contiguous run: CJK strokes, katakana phonetic extensions, enclosed CJK letters,
# CJK compatibility, Extension A ideographs and Yijing hexagrams. U+4E00..U+9FFF: the common ideographs.
_RARE_CJK = re.compile(r"[\u31c0-\u4dff]+")
_CHINESE = re.compile(r"[\u4e00-\u9fff]+")

# Unicode dash punctuation (general category Pd, as of Unicode 13) written out, so that the result does not
# depend on the Python build's Unicode tables.
_DASHES = (
    "\u002d\u058a\u05be\u1400\u1806\u2010\u2011\u2012\u2013\u2014\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40"
    "\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d"
)
_FILE_KINDS = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"
# Symbols that only decorate web captions ("***SALE***", "#tag", "a|b", "(1/2)"): replaced by a space.
_DECORATION = re.escape("#®•©™&@·º½¾¿¡§~)(][}{|\\/*")

_PUNCTUATION = _rules(
    (f"[{_DASHES}]+", "-"),
    ("[`´«»“”¨]", '"'),
    ("[‘’]", "'"),
    ("&quot;?", ""),  # entity names whose "&" or ";" was already lost
    ("&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # IP addresses
    (r"\d:\d\d\s+$", ""),  # a trailing time stamp
    (r"\\n", " "),  # an escaped newline written out as backslash-n
    (r"#\d{1,3}\b|#\d{5,}\b", ""),  # "#12", "#123456": list numbers and IDs
    (r"\b\d{6,}\b", ""),  # long numbers (IDs, phone numbers)
    (rf"\S+\.{_FILE_KINDS}", ""),  # file names
    (r"[\"']{2,}", '"'),
    (r"\.{2,}", " "),
    (f"[{_DECORATION}]+", " "),
    (r"\s+\.\s+", " "),  # a lone full stop
)
# More than three hyphens or underscores means words joined into a slug ("this-is-my-cat"): split them.
_JOINER = re.compile(r"[-_]")
_MAX_JOINERS = 3

_WEB_NOISE = _rules(
    (r"(?i)\b[a-z]{1,3}\d{3,15}\b", ""),  # product codes: "jc6640"
    (r"(?i)\b[a-z]+\d+[a-z]+\b", ""),  # "jc6640vc"
    (r"(?i)\b\d+[a-z]+\d+\b", ""),  # "6640vc231"
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (rf"\b{_FILE_KINDS}(\simages?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"(?i)\b\d*[a-z]+\d+[a-z]+\d+[a-z\d]*\b", " "),  # "j2d1a2a"
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),  # sizes: "1920x1080", "3.5×2" (Latin x, Cyrillic х, ×)
    (r"\b\s+:\s+", ": "),
    (r"(\D[,./])\b", r"\1 "),  # a space after punctuation glued to the next word
    (r"\s+", " "),
)
_ENDS = _rules(
    (r"^[\"']([\w\W]+)[\"']$", r"\1"),  # a caption wholly in quotes
    (r"^['_,\-:;]", ""),
    (r"['_,\-:+]$", ""),
    (r"^\.\S+$", ""),  # a lone ".ext"-like token
)


class _TextOfHTML(HTMLParser):
    """Collects the text content of an HTML fragment, entities decoded (tags and comments dropped)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _strip_html(text: str) -> str:
    parser = _TextOfHTML()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def _clean_once(text: str, keep_chinese: bool) -> str:
    text = unquote_plus(str(text)).strip().lower()  # 1. decode
    text = text.replace("<person>", "person")  # a placeholder tag in some caption sets, not HTML
    text = _apply(_MARKUP, text)  # 2. markup
    text = _strip_html(text)
    text = _HANDLE.sub("", text)
    text = _RARE_CJK.sub("", text)  # 3. scripts
    if not keep_chinese:
        text = _CHINESE.sub("", text)
    text = _apply(_PUNCTUATION, text)  # 4. punctuation
    if len(_JOINER.findall(text)) > _MAX_JOINERS:
        text = _JOINER.sub(" ", text)
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()  # 5. repair
    text = _apply(_WEB_NOISE, text)  # 6. web noise
    return _apply(_ENDS, text).strip()  # 7. ends
