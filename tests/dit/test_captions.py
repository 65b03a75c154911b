"""Caption cleaning: concrete input -> output pairs.

The expected outputs were checked against the reference's v1.2.0 `text_preprocessing` (run with its
BeautifulSoup call replaced by an HTML-to-text function), quirks included.
"""

import pytest

from components.dit.captions import (
    EMPTY_CAPTION,
    NEGATIVE_PROMPT,
    _clean_once,
    clean_caption,
    wrap_prompt,
)

CASES = [
    ("A red circle moving LEFT on a blue background", "a red circle moving left on a blue background"),
    ("", ""),
    ("  The camera pans over a snowy forest... at dawn.  ", "the camera pans over a snowy forest at dawn."),
    # URLs: the scheme, then hosts on common top-level domains with their paths; a query string survives
    ("Check https://www.example.com/path/to?x=1 and www.foo.org now", "check ?x=1 and now"),
    ("email me@mail.com or visit http://t.co/abc", "email me or visit"),
    # HTML tags and entities, then @handles
    ("<p>Hello <b>World</b> &amp; friends</p> by @someone_99", "hello world friends by"),
    ("line\\nbreak and <person> tag", "line break and person tag"),
    ("a%20url%2Bencoded+caption", "a url encoded caption"),
    # dashes and quotes unified
    ("Caption — with “fancy” quotes ‘single’ and – dashes", "caption - with \"fancy\" quotes 'single' and - dashes"),
    # IP addresses, list numbers, IDs, file names
    ("IP 192.168.0.1 at 12:30   ", "ip at 12:30"),
    ("item #12 and #123456 and 1234567 number", "item and and number"),
    ("photo.jpg of a dog, image.png file", "of a dog, file"),
    # decoration symbols become spaces; more than three joiners split a slug
    ('"""AUSVERKAUFT""" ***SALE*** (1/2) [tag] {x} | y', '"ausverkauft" sale 1 2 tag x y'),
    ("this-is-my-cute-cat_photo", "this is my cute cat photo"),
    ("a well-known dog", "a well-known dog"),
    # web noise: product codes, shipping/download/click phrases, sizes, page numbers
    ("code jc6640 and jc6640vc and 6640vc231 and j2d1a2a3", "code and and and"),
    ("size 1920x1080 and 3.5×2 page 12", "size and"),
    ("sale!!! free shipping worldwide, click for details, download free", "sale!!! worldwide,"),
    # punctuation glued to the next word gets a space; a caption wholly in quotes loses them
    ("a,b.c/d test . end -", "a, b. c d test end"),
    ("'quoted caption'", "quoted caption"),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_clean_caption_examples(raw, expected):
    assert clean_caption(raw) == expected


def test_chinese_is_kept_for_mt5_and_rare_cjk_blocks_always_go():
    # ㈠ (enclosed, U+3220) and 㐀 (Extension A, U+3400) are removed; ㄅ (bopomofo, U+3105) is outside the ranges
    raw = "一只猫在草地上奔跑 with ㈠ and ㄅ and 㐀 chars"
    assert clean_caption(raw, keep_chinese=True) == "一只猫在草地上奔跑 with and ㄅ and chars"
    assert clean_caption(raw, keep_chinese=False) == "with and ㄅ and chars"


def test_the_second_pass_cleans_what_the_first_exposed():
    # escaped tags become real tags only in the first pass's unescaping; the second pass strips them
    assert _clean_once("&lt;b&gt;bold&lt;/b&gt; cat", keep_chinese=True) == "<b>bold< b> cat"
    assert clean_caption("&lt;b&gt;bold&lt;/b&gt; cat") == "bold< b> cat"
    # a trailing dash is trimmed once per pass
    assert _clean_once("a cat - -", keep_chinese=True) == "a cat -"
    assert clean_caption("a cat - -") == "a cat"


def test_prompt_wrapper_and_negative_prompt_clean_as_in_the_reference():
    assert wrap_prompt("a red circle") == "(masterpiece), (best quality), (ultra-detailed), a red circle."
    assert clean_caption(wrap_prompt("a red circle")) == (
        "masterpiece , best quality , ultra-detailed , a red circle."
    )
    # the file-type rule eats "jpeg" in "jpeg artifacts", as it did for the reference
    assert "jpeg" not in clean_caption(NEGATIVE_PROMPT)
    assert clean_caption(NEGATIVE_PROMPT).startswith("nsfw, lowres, bad anatomy,")
    assert EMPTY_CAPTION == "" and clean_caption(EMPTY_CAPTION) == ""
