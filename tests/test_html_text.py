"""HTML-only posts as members read them with html_to_text on: paragraphs, line breaks,
lists and links survive as text; nothing a browser would not show gets through."""

from __future__ import annotations

from listserv.html_text import to_text


def test_paragraphs_and_line_breaks_stay_apart():
    markup = ("<html><head><title>Newsletter</title><style>p {color: red}</style></head>"
              "<body><p>Hello   all,\n  the\tbuild is green.</p><p>First line<br>second line"
              "<br/>third &amp; last</p><div>A div</div><div>Another</div></body></html>")
    assert to_text(markup) == ("Hello all, the build is green.\n\nFirst line\nsecond line\n"
                               "third & last\n\nA div\nAnother\n")


def test_lists_are_items_on_their_own_lines_numbered_as_the_markup_says():
    markup = ("<p>Changes:</p><ul><li>faster</li><li>smaller<ul><li>by half</li></ul></li>"
              "</ul><ol start=\"3\"><li>three</li><li>four</li></ol><p>End.</p>")
    assert to_text(markup) == ("Changes:\n\n- faster\n- smaller\n  - by half\n\n3. three\n"
                               "4. four\n\nEnd.\n")


def test_links_keep_their_address_once():
    markup = ('<p>Read <a href="https://example.org/docs">the docs</a>, or '
              '<a href="https://example.org/">https://example.org/</a>, or write to '
              '<a href="mailto:dev@example.org">dev@example.org</a>; '
              '<a href="javascript:alert(1)">not this</a>.</p>')
    assert to_text(markup) == ("Read the docs <https://example.org/docs>, or "
                               "https://example.org/, or write to dev@example.org; not this.\n")


def test_what_a_browser_hides_stays_hidden_and_quotes_are_quoted():
    markup = ('<script>alert("x")</script><!-- a comment --><blockquote><p>You wrote</p>'
              '</blockquote><p>I agree <img src="x.png" alt="smile"></p>'
              '<pre>  indented\n    code</pre>')
    assert to_text(markup) == "> You wrote\n\nI agree [smile]\n\n  indented\n    code\n"


def test_hostile_markup_costs_its_size_and_never_raises():
    assert to_text("<div>" * 50_000 + "deep" + "</p>" * 1000) == "deep\n"
    deep = to_text("<blockquote><ul>" * 20_000 + "<li>x" * 1000)
    assert len(deep) < 1000 * 50 and deep.splitlines()[0] == "> " * 8 + "  " * 8 + "- x"
    assert to_text("a <b<b<b") == "a\n"  # a tag never closed, at the end: not shown
    assert to_text("<style" * 50_000 + "never closed") == "\n"  # took seconds, read again
    assert to_text("<a>x" * 50_000).count("x") == 50_000  # links never closed, each apart
    assert "text" in to_text("<" * 10_000 + " text")
    assert to_text("&lt;tag&gt;&nbsp;&amp;") == "<tag> &\n"
    assert to_text('<ol start="' + "9" * 5000 + '"><li>x</ol>') == "1. x\n"  # int() raised
    assert to_text("a<![if !supportLists]>b<![endif]><![foo[ c ]]>d") == "abd\n"  # raised
    assert to_text("") == "\n"
