#!/usr/bin/env python3
"""docs/reference.md's header table names exactly the public names of each header.

Reads every public header (include/ftm/*.hpp but the umbrella, and include/ftm/engines/),
collects the names it declares at namespace scope in `ftm` or `ftm::engines` (never
`detail`): classes, structs, enums, concepts, aliases, functions and variables. Then it
reads the row of that header in reference.md's "## Headers" table, whose backticked
names are the index of the reference. Fails, naming the difference, when a header
declares a name its row does not list, or a row lists a name its header does not
declare, so that the reference cannot drift from the headers.

    python3 docs/check_reference.py [source dir]
"""

import pathlib
import re
import sys

KEYWORDS = {
    "alignas", "alignof", "auto", "bool", "char", "const", "consteval", "constexpr",
    "constinit", "decltype", "double", "explicit", "extern", "float", "friend", "inline",
    "int", "long", "noexcept", "requires", "short", "signed", "static", "template",
    "typename", "unsigned", "void", "volatile", "return", "sizeof", "true", "false",
}


def strip(text):
    """Removes comments, string and character literals, and preprocessor lines."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'R"\((.*?)\)"', '""', text, flags=re.S)
    text = re.sub(r'"(\\.|[^"\\\n])*"', '""', text)
    text = re.sub(r"'(\\.|[^'\\\n])*'", "''", text)
    # Preprocessor lines, with their continuations.
    text = re.sub(r"^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", "", text, flags=re.M)
    return text


TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|::|->|&&|\|\||[{}()<>\[\];=,:]|\S")


def skip_group(tokens, i, open_, close):
    """Index after the group that opens at tokens[i]."""
    depth = 0
    while i < len(tokens):
        if tokens[i] == open_:
            depth += 1
        elif tokens[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def skip_angles(tokens, i):
    """Index after the template argument list opening at tokens[i] ('<')."""
    depth = 0
    while i < len(tokens):
        t = tokens[i]
        if t in "([{":
            i = skip_group(tokens, i, t, {"(": ")", "[": "]", "{": "}"}[t])
            continue
        if t == "<":
            depth += 1
        elif t == ">":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def declared_name(stmt):
    """The name a namespace-scope declaration (its tokens, up to a body) declares."""
    i = 0
    while i < len(stmt) and stmt[i] == "template":
        i = skip_angles(stmt, i + 1)
        if i < len(stmt) and stmt[i] == "requires":  # a requires-clause after the list
            i += 1
            while i < len(stmt):
                if stmt[i] == "(":
                    i = skip_group(stmt, i, "(", ")")
                elif i + 1 < len(stmt) and stmt[i + 1] == "<":
                    i = skip_angles(stmt, i + 1)
                elif stmt[i] == "::" or re.match(r"\w", stmt[i]) and stmt[i + 1 : i + 2] == ["::"]:
                    i += 1
                    continue
                else:
                    i += 1
                if i < len(stmt) and stmt[i] in ("&&", "||"):
                    i += 1
                    continue
                break
    rest = stmt[i:]
    if not rest or rest[0] in ("static_assert", "using", "namespace", "extern"):
        if rest[:1] == ["using"] and len(rest) > 2 and rest[2] == "=":
            return ("alias", rest[1])
        return None
    if rest[0] in ("class", "struct", "union", "enum"):
        j = 1
        if rest[0] == "enum" and rest[1:2] in (["class"], ["struct"]):
            j = 2
        while j < len(rest) and rest[j] in ("alignas",):
            j = skip_group(rest, j + 1, "(", ")")
        name = rest[j] if j < len(rest) else None
        # A forward declaration declares nothing new here.
        if name is None or "{}" not in rest:
            return None
        # class X<...> is a specialization of a template declared elsewhere.
        if rest[j + 1 : j + 2] == ["<"]:
            return None
        return ("type", name)
    if rest[0] == "concept":
        return ("concept", rest[1])
    # A function or a variable: the identifier before the first top-level '(' or '='.
    j = 0
    while j < len(rest):
        t = rest[j]
        if t == "<" and j > 0 and re.match(r"\w", rest[j - 1]):
            j = skip_angles(rest, j)
            continue
        if t in ("decltype", "noexcept", "alignas") and rest[j + 1 : j + 2] == ["("]:
            j = skip_group(rest, j + 1, "(", ")")
            continue
        if t in ("(", "=", "{}", ";"):
            k = j - 1
            if k >= 0 and rest[k] == ">":  # name<...>( : an explicit specialization
                return None
            if k >= 1 and rest[k - 1] == "operator":
                return None
            if k >= 0 and rest[k] == "operator":
                return None
            if k >= 0 and re.match(r"[A-Za-z_]\w*$", rest[k]) and rest[k] not in KEYWORDS:
                if k >= 1 and rest[k - 1] == "::":  # a definition of something declared elsewhere
                    return None
                return ("function" if t == "(" else "variable", rest[k])
            return None
        j += 1
    return None


def public_names(path):
    """The names `path` declares at namespace scope in a public ftm namespace."""
    tokens = TOKEN.findall(strip(path.read_text()))
    names = set()
    scopes = []  # 'ns-public', 'ns-private', 'other'
    stmt = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        public_scope = bool(scopes) and scopes[-1] == "ns-public"
        if t == "namespace":
            j = i + 1
            parts = []
            while j < len(tokens) and tokens[j] != "{":
                parts.append(tokens[j])
                j += 1
            name = "".join(p for p in parts if p != "inline")
            inside_ftm = name.startswith("ftm") or (scopes and scopes[-1] in ("ns-public", "ns-private"))
            private = "detail" in name or not inside_ftm or (scopes and scopes[-1] == "ns-private")
            scopes.append("ns-private" if private else "ns-public")
            stmt = []
            i = j + 1
            continue
        if t == "{":
            i = skip_group(tokens, i, "{", "}")  # never namespace scope inside
            if not public_scope:
                stmt = []
                continue
            if stmt.count("(") > stmt.count(")") or stmt.count("<") > stmt.count(">"):
                stmt.append("{}")  # a default argument's braces, inside the parameters
                continue
            d = declared_name(stmt + ["{}"])
            if d and d[0] == "function":
                names.add(d[1])  # a function's body ends its declaration
                stmt = []
            else:
                stmt.append("{}")  # a class or an initialiser: on to its ';'
            continue
        if t == "}":
            if scopes:
                scopes.pop()
            stmt = []
            i += 1
            continue
        if t == ";":
            if public_scope and stmt:
                d = declared_name(stmt)
                if d:
                    names.add(d[1])
            stmt = []
            i += 1
            continue
        stmt.append(t)
        i += 1
    return names


def table_rows(reference):
    """{header: row text} of the "## Headers" table."""
    rows = {}
    in_table = False
    for line in reference.splitlines():
        if line == "## Headers":
            in_table = True
        elif in_table and line.startswith("## "):
            break
        elif in_table:
            m = re.match(r"^\| `<(ftm/[^>]*)>` \| (.*) \|$", line)
            if m:
                rows[m.group(1)] = m.group(2)
    return rows


def listed_names(row):
    """The names a row lists: the identifier that starts each backticked item."""
    names = set()
    for item in re.findall(r"`([^`]*)`", row):
        if item.startswith("<"):
            continue
        item = re.sub(r"^ftm::(engines::)?", "", item)
        m = re.match(r"[A-Za-z_]\w*", item)
        if m:
            names.add(m.group(0))
    return names


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent.parent)
    include = root / "include"
    headers = sorted(p for p in (include / "ftm").glob("*.hpp") if p.name != "ftm.hpp")
    headers += sorted((include / "ftm" / "engines").glob("*.hpp"))
    rows = table_rows((root / "docs" / "reference.md").read_text())
    problems = []
    total = 0
    for path in headers:
        header = path.relative_to(include).as_posix()
        declared = public_names(path)
        total += len(declared)
        if header not in rows:
            problems.append(f"<{header}> has no row in the table")
            continue
        listed = listed_names(rows[header])
        for name in sorted(declared - listed):
            problems.append(f"<{header}> declares `{name}`, which its row does not list")
        for name in sorted(listed - declared):
            problems.append(f"<{header}>'s row lists `{name}`, which the header does not declare")
    if problems:
        print("docs/reference.md's header table and the headers drifted:")
        for p in problems:
            print("  " + p)
        return 1
    print(f"check_reference: the table lists the {total} public names of {len(headers)} headers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
