"""Hostile API text, and a look at the HTML a converter made of a message, for the tests of
escaping."""

from __future__ import annotations

from html.parser import HTMLParser

MENTIONS = ("<!channel>", "<!everyone>", "<!here>", "<@U123ABC>", "<#C0123|general>")
DISGUISED = "<http://evil.example|click here>"
HTML_ATTACKS = (
    "<script>alert(1)</script>",
    '<img src="http://track.example/p.gif">',
    '<a href="http://phish.example">your bank</a>',
)
HOSTILE = " ".join((*MENTIONS, DISGUISED, *HTML_ATTACKS, "**bold** _it_ `code` [x](http://evil)"))


class Html(HTMLParser):
    """The elements and the text of an HTML fragment."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(source)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.tags.append(("!--", {}))

    def handle_decl(self, decl: str) -> None:
        self.tags.append(("!", {}))

    def unknown_decl(self, data: str) -> None:
        self.tags.append(("!", {}))

    def handle_pi(self, data: str) -> None:
        self.tags.append(("?", {}))
