"""Random server configurations for the differential test: documents drawn from a grammar of
HCL1 and JSON shaped like SPIRE's (with the case, repetition, type and syntax variations that
matter), and byte-level mutations of them and of the corpus, so that the two readers also meet
almost-valid text.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from devtools.hcloracle import Case

_NAMES = ["trust_domain", "region", "key_identifier_value", "key_identifier_file", "bind_port"]
_IDENTS = ["a", "b", "x_y", "k-1", "v.2", "server", "plugins", "plugin_data", "enabled"]
_VALUES_STR = ["example.org", "us-east-1", "a/b", "srv-1", "", "spiffe://example.org", "x y"]
_ESCAPES = ["\\n", "\\t", "\\\\", '\\"', "\\101", "\\x41", "\\u0041", "\\U00000041", "\\q", "\\1"]
_SPICE = [*'{}[]=",\n#/*<-.0x\r\t$\\:', "${", "<<EOF\n", "\nEOF\n", "//", "/*", "*/", " "]


class Grammar:
    """Draws documents; every choice comes from one seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, options: Sequence[str]) -> str:
        return self.rng.choice(options)

    def case(self, name: str) -> str:
        """A name in the case the library matches anyway (or, rarely, spelt otherwise)."""
        r = self.rng.random()
        if r < 0.6:
            return name
        if r < 0.75:
            return name.upper()
        if r < 0.9:
            return "_".join(p.capitalize() for p in name.split("_"))
        return name + "x"

    def key(self, name: str) -> str:
        text = self.case(name)
        return f'"{text}"' if self.rng.random() < 0.2 else text

    def string(self) -> str:
        value = self.pick(_VALUES_STR)
        if self.rng.random() < 0.3:
            i = self.rng.randrange(len(value) + 1)
            value = value[:i] + self.pick(_ESCAPES) + value[i:]
        if self.rng.random() < 0.05:
            value += "${var.x}"
        return f'"{value}"'

    def heredoc(self) -> str:
        marker = self.pick(["EOF", "ID", "X1"])
        dash = "-" if self.rng.random() < 0.5 else ""
        indent = self.pick(["", "  ", "\t"])
        closing = self.pick(["", "  ", "\t", " "])
        body = self.pick(_VALUES_STR)
        return f"<<{dash}{marker}\n{indent}{body}\n{closing}{marker}\n"

    def literal(self) -> str:
        r = self.rng.random()
        if r < 0.55:
            return self.string()
        if r < 0.65:
            return self.heredoc()
        if r < 0.8:
            return self.pick(["42", "0", "017", "0x1F", "1.5", "1e3", ".5", "-3", "08", "1.", "0e"])
        return self.pick(["true", "false"])

    def value(self, depth: int) -> str:
        r = self.rng.random()
        if depth > 2 or r < 0.7:
            return self.literal()
        if r < 0.85:
            items = [self.literal() for _ in range(self.rng.randrange(3))]
            sep = self.pick([", ", ",", " , "])
            tail = self.pick(["", ","])
            return "[" + sep.join(items) + tail + "]"
        return "{ " + self.body(depth + 1, self.pick(_IDENTS)) + " }"

    def item(self, depth: int, name: str) -> str:
        comment = self.pick(["", "", "", " # c", " // c", " /* c */"])
        if self.rng.random() < 0.8:
            return f"{self.key(name)} = {self.value(depth)}{comment}"
        return f"{self.key(name)} {{ {self.body(depth + 1, self.pick(_IDENTS))} }}{comment}"

    def body(self, depth: int, *names: str) -> str:
        items = [self.item(depth, n) for n in names]
        for _ in range(self.rng.randrange(3)):
            items.append(self.item(depth, self.pick(_IDENTS)))
        self.rng.shuffle(items)
        sep = self.pick(["\n", "\n", ", ", " ", ",\n"])
        return sep.join(items)

    def aws_kms(self) -> str:
        fields = []
        for name in ("region", "key_identifier_value", "key_identifier_file"):
            if self.rng.random() < 0.7:
                value = self.value(3) if self.rng.random() < 0.3 else self.string()
                fields.append(f"{self.key(name)} = {value}")
        if self.rng.random() < 0.2:
            fields.append(f"{self.key('region')} = {self.string()}")  # repeated
        if self.rng.random() < 0.1:
            fields.append(f"key_tags = {{ a = {self.literal()} }}")
        sep = self.pick(["\n", " ", ", "])
        data = sep.join(fields)
        form = self.rng.random()
        enabled = self.pick(["", "", "enabled = true ", "enabled = false ", 'enabled = "true" '])
        km, name = (
            self.pick(["KeyManager", "KeyManager", '"KeyManager"', "keymanager"]),
            self.pick(['"aws_kms"', "aws_kms", '"aws_kms"', '"AWS_KMS"']),
        )
        data_key = self.key("plugin_data")
        if form < 0.5:
            return f"{km} {name} {{ {enabled}{data_key} {{ {data} }} }}"
        if form < 0.7:
            return f"{km} {{ {name.strip(chr(34))} {{ {enabled}{data_key} = {{ {data} }} }} }}"
        if form < 0.85:
            return f"{km} {name} {data_key} {{ {data} }}"
        return f"{km} {name} {{ {enabled}{data_key} {{ {data} }}\n}}"

    def hcl(self) -> str:
        parts = []
        server = f"{self.key('server')} {{ {self.body(1, 'trust_domain')} }}"
        parts.append(server)
        if self.rng.random() < 0.15:
            parts.append(f"server {{ {self.body(1, 'trust_domain')} }}")
        plugins = [self.aws_kms()]
        if self.rng.random() < 0.4:
            plugins.append('DataStore "sql" { plugin_data { database_type = "sqlite3" } }')
        if self.rng.random() < 0.1:
            plugins.append(self.aws_kms())
        self.rng.shuffle(plugins)
        parts.append(f"{self.key('plugins')} {{\n" + "\n".join(plugins) + "\n}")
        if self.rng.random() < 0.3:
            enabled = self.pick(["true", "false", '"true"'])
            parts.append(
                f"health_checks {{ listener_enabled = {enabled} bind_port = {self.literal()} }}"
            )
        self.rng.shuffle(parts)
        text = "\n".join(parts)
        if self.rng.random() < 0.3:
            text += "\n"
        if self.rng.random() < 0.1:
            text = text.replace("\n", "\r\n")
        return text

    def json_value(self, depth: int) -> str:
        r = self.rng.random()
        if depth > 3 or r < 0.5:
            return self.pick(['"x"', "1", "1.5", "true", "null", '"a\\u0041"', "[]", "[1, true]"])
        if r < 0.75:
            return "[" + ", ".join(self.json_value(depth + 1) for _ in range(2)) + "]"
        return "{" + f'"{self.pick(_IDENTS)}": {self.json_value(depth + 1)}' + "}"

    def json(self) -> str:
        region = self.pick(['"us-east-1"', "null", "1", '"us-\\u0065ast-1"'])
        value = self.pick(['"v"', '""', '"a/b"', "7"])
        data = f'{{"region": {region}, "key_identifier_value": {value}}}'
        plugin = f'{{"aws_kms": {{"plugin_data": {data}}}}}'
        km = f"[{plugin}]" if self.rng.random() < 0.5 else plugin
        td = self.pick(['"example.org"', '"ex\\u0061mple.org"', "1", "null", '["x"]'])
        extra = f', "{self.pick(_IDENTS)}": {self.json_value(0)}' if self.rng.random() < 0.5 else ""
        text = f'{{"server": {{"trust_domain": {td}{extra}}}, "plugins": {{"KeyManager": {km}}}}}'
        return text


_TOKENS = [
    "a",
    "b",
    '"s"',
    "=",
    "{",
    "}",
    "[",
    "]",
    ",",
    "1",
    "0x",
    "1.5e",
    ".5",
    "-",
    "+",
    "true",
    "<<EOF\nx\nEOF\n",
    "<<-E\n  y\n  E\n",
    "# c\n",
    "// c\n",
    "/* c */",
    '"${a("b")}"',
    '"\\u00e9"',
    "\n",
    " ",
    "null",
    ":",
    "KeyManager",
    '"aws_kms"',
    "plugin_data",
    "region",
    "trust_domain",
    "server",
    "plugins",
    '"a\\',
    "\t",
    "\r\n",
    "$X",
    "${Y}",
]


def chaos(rng: random.Random) -> str:
    """Random tokens, glued: text that is mostly not a configuration."""
    return "".join(
        rng.choice(_TOKENS) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(1, 40))
    )


def mutate(rng: random.Random, text: str) -> str:
    """A few random edits: delete, insert, swap, truncate."""
    for _ in range(rng.randint(1, 3)):
        if not text:
            break
        i = rng.randrange(len(text))
        r = rng.random()
        if r < 0.35:
            text = text[:i] + text[i + 1 :]
        elif r < 0.75:
            text = text[:i] + rng.choice(_SPICE) + text[i:]
        elif r < 0.9:
            j = rng.randrange(len(text))
            text = text[:i] + text[j : j + rng.randint(1, 8)] + text[i:]
        else:
            text = text[:i]
    return text


def cases(seed: int, count: int, seeds: Sequence[Case] = ()) -> Iterator[Case]:
    """``count`` random cases: grammar documents, and mutations of them and of ``seeds``."""
    rng = random.Random(seed)
    grammar = Grammar(rng)
    env = {"X": "x", "Y": "example.org", "REGION": "us-east-1", "EMPTY": "", "Q": '"'}
    for index in range(count):
        r = rng.random()
        if r < 0.4:
            text = grammar.hcl()
        elif r < 0.55:
            text = grammar.json()
        elif r < 0.75 or not seeds:
            text = mutate(rng, grammar.hcl() if rng.random() < 0.7 else grammar.json())
        elif r < 0.9:
            text = mutate(rng, rng.choice(seeds).text)
        else:
            text = chaos(rng)
        expand = rng.random() < 0.1
        if expand:
            text = text.replace('"example.org"', rng.choice(['"$Y"', '"${Y}"', '"$$Y"', "$Q"]))
        yield Case(f"random-{seed}-{index}", text, expand_env=expand, env=env if expand else {})
