#!/usr/bin/env bash
# Fails when a module under src/ names a module of a higher layer through a
# `crate::…` path (in a `use`, grouped `use crate::{a, b::c}` included, or
# inline), printing file, line and both layers. Comments and string literals
# are ignored. A module missing from the list below is an error too, so a new
# one has to be given its place.
#
# Layers, top to bottom; a module may name its own layer and those below:
#
#   1  main cli                      edges: the command line
#   2  http app                      edges: HTTP and start-up (AppState)
#   3  jobs ops                      background workers, operator actions
#   4  ingest node quota             services over the core
#   5  core                          the service core (Core, Clock, Background)
#   6  meta blob auth domain zip     stores, identity, pure helpers
#      config telemetry scan media
#
# Besides, the two edges stay apart: `cli` may start the server through
# `app` but never names `http` (what both need lives in a service below).
#
# docs/architecture.md describes the same list; keep them together.
set -euo pipefail
cd "$(dirname "$0")/.."

exec python3 - "$@" <<'PY'
import pathlib, re, sys

LAYERS = [
    ["main", "cli"],
    ["http", "app"],
    ["jobs", "ops"],
    ["ingest", "node", "quota"],
    ["core"],
    ["meta", "blob", "auth", "domain", "zip", "config", "telemetry", "scan", "media"],
]
LAYER = {m: i for i, ms in enumerate(LAYERS) for m in ms}
# (module, module it may not name) beyond the layer order.
APART = {("cli", "http"), ("main", "http")}


RAW = re.compile(r'b?r(#*)"')
IDCHAR = re.compile(r"[A-Za-z0-9_]")


def code_only(text):
    """The text with comments and string/char literals blanked, newlines kept."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif (m := RAW.match(text, i)) and (i == 0 or not IDCHAR.match(text[i - 1])):
            end = text.find('"' + m.group(1), m.end())
            j = n if end < 0 else end + 1 + len(m.group(1))
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i:j + 1]))
            i = j + 1
        elif c == "'" and (text[i + 1:i + 2] == "\\" or text[i + 2:i + 3] == "'"):
            j = text.find("'", i + 2 if text[i + 1] != "\\" else i + 3)
            j = n - 1 if j < 0 else j
            out.append(" " * (j + 1 - i))
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


IDENT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)")


def named(code):
    """(offset, top-level module) for each `crate::` path in `code`."""
    for m in re.finditer(r"(?<![A-Za-z0-9_$])crate\s*::\s*", code):
        i = m.end()
        if code[i:i + 1] != "{":
            im = IDENT.match(code, i)
            if im:
                yield im.start(1), im.group(1)
            continue
        # A group: the first identifier of each item at depth 1.
        depth, j, expect = 1, i + 1, True
        while j < len(code) and depth:
            ch = code[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 1:
                expect = True
            elif expect and depth == 1 and not ch.isspace():
                im = IDENT.match(code, j)
                if im:
                    if im.group(1) != "self":
                        yield im.start(1), im.group(1)
                    j = im.end()
                    expect = False
                    continue
                expect = False
            j += 1


def module_of(path):
    rel = path.relative_to("src").parts
    return rel[0][:-3] if len(rel) == 1 else rel[0]


bad = 0
for path in sorted(pathlib.Path("src").rglob("*.rs")):
    me = module_of(path)
    if me == "lib":
        continue
    if me not in LAYER:
        print(f"{path}:1: module `{me}` is not in the layer list of scripts/check-layers.sh")
        bad += 1
        continue
    code = code_only(path.read_text())
    for off, other in named(code):
        if other not in LAYER:
            continue  # an item of the crate root, not a module
        line = code.count("\n", 0, off) + 1
        if LAYER[other] < LAYER[me]:
            print(
                f"{path}:{line}: `{me}` (layer {LAYER[me] + 1}) names "
                f"`crate::{other}` (layer {LAYER[other] + 1}); arrows point down only"
            )
            bad += 1
        elif (me, other) in APART:
            print(f"{path}:{line}: `{me}` names `crate::{other}`; the edges stay apart")
            bad += 1
if bad:
    print(f"layer check: {bad} upward reference(s)")
    sys.exit(1)
print("layer check: ok")
PY
