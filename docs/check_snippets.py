#!/usr/bin/env python3
"""Checks that the code snippets in the docs are copies of the examples.

A snippet in a Markdown file is a ```cpp block preceded by a tag line:

    <!-- snippet: examples/bank.cpp#transfer -->
    ```cpp
    ...
    ```

and it must equal, line for line, the region of the source file between
`// [snippet:transfer]` and `// [end-snippet]`, with the region's common
indentation removed. Paths are relative to the repository root.

    docs/check_snippets.py            check README.md and docs/*.md
    docs/check_snippets.py FILE...    check these Markdown files
    docs/check_snippets.py --fix      rewrite the snippets from the examples

Exit status: 0 when every snippet matches, 1 otherwise (a diff is printed).
"""

import difflib
import pathlib
import re
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
TAG = re.compile(r"^<!--\s*snippet:\s*(?P<path>[^#\s]+)#(?P<name>[\w.-]+)\s*-->\s*$")
BEGIN = re.compile(r"^\s*//\s*\[snippet:(?P<name>[\w.-]+)\]\s*$")
END = re.compile(r"^\s*//\s*\[end-snippet\]\s*$")


def regions(path):
    """Every snippet region of a source file, by name; raises on malformed markers."""
    found, name, body = {}, None, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if m := BEGIN.match(line):
            if name is not None:
                raise ValueError(f"{path}:{number}: snippet '{m['name']}' opens inside '{name}'")
            if m["name"] in found:
                raise ValueError(f"{path}:{number}: snippet '{m['name']}' is defined twice")
            name, body = m["name"], []
        elif END.match(line):
            if name is None:
                raise ValueError(f"{path}:{number}: [end-snippet] without a [snippet:...]")
            found[name] = textwrap.dedent("\n".join(body)).splitlines()
            name = None
        elif name is not None:
            body.append(line)
    if name is not None:
        raise ValueError(f"{path}: snippet '{name}' is never closed")
    return found


def check(markdown, fix):
    """Returns the problems found in one Markdown file (rewriting it with `fix`)."""
    problems, lines, out = [], markdown.read_text().splitlines(), []
    cache = {}
    i = 0
    while i < len(lines):
        out.append(lines[i])
        m = TAG.match(lines[i])
        i += 1
        if not m:
            continue
        where = f"{markdown.relative_to(ROOT)}:{i}"
        if i >= len(lines) or lines[i].strip() != "```cpp":
            problems.append(f"{where}: the snippet tag must be followed by a ```cpp block")
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            problems.append(f"{where}: the ```cpp block is never closed")
            out.extend(lines[i:])
            break
        block = lines[i + 1:end]
        source = ROOT / m["path"]
        try:
            if source not in cache:
                cache[source] = regions(source)
            expected = cache[source][m["name"]]
        except FileNotFoundError:
            problems.append(f"{where}: {m['path']} does not exist")
            expected = None
        except KeyError:
            problems.append(f"{where}: {m['path']} has no snippet '{m['name']}'")
            expected = None
        except ValueError as e:
            problems.append(str(e))
            expected = None
        if expected is not None and block != expected:
            if fix:
                block = expected
            else:
                diff = difflib.unified_diff(expected, block, f"{m['path']}#{m['name']}",
                                            where, lineterm="")
                problems.append(f"{where}: the snippet differs from {m['path']}#{m['name']}:\n"
                                + "\n".join(diff))
        out.append(lines[i])
        out.extend(block)
        out.append(lines[end])
        i = end + 1
    if fix and not problems:
        text = "\n".join(out) + "\n"
        if text != markdown.read_text():
            markdown.write_text(text)
            print(f"rewrote {markdown.relative_to(ROOT)}")
    return problems


def main(argv):
    fix = "--fix" in argv
    files = [pathlib.Path(a).resolve() for a in argv if a != "--fix"]
    if not files:
        files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    problems, snippets = [], 0
    for f in files:
        if f.exists():
            snippets += sum(1 for line in f.read_text().splitlines() if TAG.match(line))
            problems += check(f, fix)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"check_snippets: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_snippets: {snippets} snippet(s) match the examples")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
