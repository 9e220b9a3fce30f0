#!/usr/bin/env python3
"""doclinks.py - every relative link of the given Markdown files resolves.

    python3 tests/tools/doclinks.py FILE.md...

A link [text](target) or an image ![alt](target) whose target is not a URL
must name a file or folder that exists, relative to the page; a #fragment
on a Markdown page (or alone, for the page itself) must match one of that
page's headings, turned into an anchor the way GitHub does (lower case,
punctuation dropped, spaces to hyphens).  Links inside code are ignored.
Prints one line per broken link (page:line: target: problem) and exits 1
when there is any.  Standard library only.
"""
import os
import re
import sys

LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def strip_code(line):
    """The line without its `inline code` spans."""
    return re.sub(r"`[^`]*`", "", line)


def anchors(path, cache={}):
    if path not in cache:
        found = set()
        seen = {}
        in_fence = False
        with open(path, encoding="utf-8") as f:
            for line in f:
                if FENCE.match(line):
                    in_fence = not in_fence
                    continue
                m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
                if in_fence or not m:
                    continue
                slug = m.group(2).strip().lower()
                slug = re.sub(r"[^\w\- ]", "", slug, flags=re.UNICODE).replace(" ", "-")
                n = seen.get(slug, 0)
                seen[slug] = n + 1
                found.add(slug if n == 0 else "%s-%d" % (slug, n))
        cache[path] = found
    return cache[path]


def check(page):
    bad = []
    in_fence = False
    with open(page, encoding="utf-8") as f:
        lines = f.readlines()
    for no, line in enumerate(lines, 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for m in LINK.finditer(strip_code(line)):
            target = m.group(1)
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            path, _, frag = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(dest):
                bad.append("%s:%d: %s: no such file or folder" % (page, no, target))
            elif frag and dest.endswith(".md") and frag.lower() not in anchors(dest):
                bad.append("%s:%d: %s: no heading #%s in %s" % (page, no, target, frag, dest))
    return bad


def main(argv):
    if len(argv) < 2:
        print("usage: doclinks.py FILE.md...", file=sys.stderr)
        return 2
    bad = []
    for page in argv[1:]:
        try:
            bad += check(page)
        except OSError as e:
            bad.append("%s: %s" % (page, e.strerror))
    for b in bad:
        print(b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
