#!/usr/bin/env python3
"""`perf script` output -> folded stacks -> an SVG flame graph (no dependencies).

  perf script -i perf.data -F comm,tid,ip,sym --no-inline | flamegraph.py --title T --out x.svg
      [--folded x.folded] [--top 25]

Each sample's stack (leaf first in perf's output) becomes one root-to-leaf
line; the SVG draws one box per frame, width proportional to its samples,
with the name and share in a tooltip (<title>). Frames are grouped by
thread name at the root. --top prints the functions with the most samples
as leaf ("self") and anywhere on the stack ("total").
"""
import argparse
import collections
import html
import re
import sys


def clean(sym):
    sym = re.sub(r"\+0x[0-9a-f]+$", "", sym.strip())
    # Rust symbols: drop the hash suffix and generic noise
    sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)
    return sym or "[unknown]"


def read_stacks(f):
    stacks = collections.Counter()
    head, frames = None, []

    def flush():
        if head is not None:
            root = re.sub(r"[-_:]?\d+$", "", head) or head  # tokio-runtime-w, not one per tid
            stacks[";".join([root] + [clean(x) for x in reversed(frames)])] += 1

    for line in f:
        if not line.strip():
            flush()
            head, frames = None, []
            continue
        if not line[0].isspace():
            flush()
            head, frames = line.split()[0], []
            continue
        parts = line.strip().split(None, 1)
        frames.append(parts[1].rsplit(" (", 1)[0] if len(parts) > 1 else "[unknown]")
    flush()
    return stacks


def color(name):
    h = sum(ord(c) for c in name) % 60
    if "sha2" in name or "sha256" in name:
        return "rgb(230,120,60)"
    if name.startswith("[k]") or "kernel" in name or name.startswith("__") or "syscall" in name:
        return f"rgb({200 + h % 50},{90 + h},{90})"
    return f"rgb({225 + h % 30},{100 + h * 2},{40})"


def svg(stacks, title, width=1200, row=16):
    total = sum(stacks.values())
    tree = {}
    for st, n in stacks.items():
        node = tree
        for fr in st.split(";"):
            node = node.setdefault(fr, [0, {}])
            node[0] += n
            node = node[1]
    depth = max((s.count(";") + 1 for s in stacks), default=1)
    height = (depth + 3) * row
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="monospace" font-size="11">',
           f'<rect width="100%" height="100%" fill="#fdfdf6"/>',
           f'<text x="{width / 2}" y="{row}" text-anchor="middle" font-size="14">'
           f'{html.escape(title)} ({total} samples)</text>']

    def draw(node, x, level):
        for name, (n, kids) in sorted(node.items()):
            w = n / total * width
            y = height - (level + 1) * row
            if w >= 0.5:
                label = html.escape(name)
                pct = 100.0 * n / total
                out.append(f'<g><title>{label} ({n} samples, {pct:.2f}%)</title>'
                           f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" '
                           f'fill="{color(name)}" rx="2"/>')
                chars = int(w / 7)
                if chars >= 3:
                    text = name if len(name) <= chars else name[:chars - 2] + ".."
                    out.append(f'<text x="{x + 3:.1f}" y="{y + row - 4}">{html.escape(text)}</text>')
                out.append('</g>')
                draw(kids, x, level + 1)
            x += w

    draw(tree, 0.0, 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--title", default="CPU")
    ap.add_argument("--out", required=True)
    ap.add_argument("--folded")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    stacks = read_stacks(sys.stdin)
    if a.folded:
        with open(a.folded, "w") as f:
            for st, n in stacks.most_common():
                f.write(f"{st} {n}\n")
    with open(a.out, "w") as f:
        f.write(svg(stacks, a.title))
    total = sum(stacks.values()) or 1
    self_, incl = collections.Counter(), collections.Counter()
    for st, n in stacks.items():
        fr = st.split(";")
        self_[fr[-1]] += n
        for x in set(fr[1:]):
            incl[x] += n
    print(f"{a.title}: {total} samples")
    print("  self%   total%  function")
    for name, n in self_.most_common(a.top):
        print(f"  {100 * n / total:5.1f}   {100 * incl[name] / total:5.1f}   {name[:110]}")


if __name__ == "__main__":
    main()
