#!/usr/bin/env python3
"""jobdoc.py - the key reference of a docs page, rendered from a JSON Schema.

    python3 tests/tools/jobdoc.py SCHEMA.json PAGE.md            rewrite the page
    python3 tests/tools/jobdoc.py SCHEMA.json PAGE.md --check    fail when stale

Every key of the schema, nested objects too, becomes one entry: its path
(`corpus.format`), its type with the allowed values and range, its default
(or "required") and its description.  The entries replace what lies between
the two marker lines of PAGE.md (BEGIN and END below); the text around them
is written by hand and left alone.

--check renders the same entries and compares them with the page, key by
key: it fails (exit status 1) naming the first key that is missing, extra
or different, and names any key of the schema without a description.
`make docs` rewrites the pages, `make test` checks them.  Standard library
only.
"""
import json
import sys

BEGIN = "<!-- BEGIN keys generated from %s by tests/tools/jobdoc.py; edit the schema, then run `make docs` -->"
END = "<!-- END generated keys -->"


def _num(x):
    """A bound or default as JSON writes it (1e-08, not 1e-8 or 0.00000001)."""
    return json.dumps(x)


def _code(value):
    return "`%s`" % json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _range(s):
    """The numeric or length bounds of schema s as a short phrase, or ''."""
    parts = []
    if "minimum" in s:
        parts.append(">= %s" % _num(s["minimum"]))
    if "exclusiveMinimum" in s:
        parts.append("> %s" % _num(s["exclusiveMinimum"]))
    if "maximum" in s:
        parts.append("<= %s" % _num(s["maximum"]))
    if "exclusiveMaximum" in s:
        parts.append("< %s" % _num(s["exclusiveMaximum"]))
    if "minLength" in s:
        parts.append("at least %d character%s" % (s["minLength"], "" if s["minLength"] == 1 else "s"))
    if "maxLength" in s:
        parts.append("at most %d characters" % s["maxLength"])
    return ", ".join(parts)


def _type(s):
    """What schema s accepts, in words: 'integer (>= 1, <= 100)'."""
    if "const" in s:
        return _code(s["const"])
    if "enum" in s:
        return "one of " + ", ".join(_code(v) for v in s["enum"])
    if "oneOf" in s or "anyOf" in s:
        return ", or ".join(_type(alt) for alt in s.get("oneOf", s.get("anyOf")))
    t = s.get("type")
    names = t if isinstance(t, list) else [t] if t else ["any value"]
    words = []
    for name in names:
        if name == "array" and "items" in s:
            w = "array of " + _type(s["items"])
            n_min, n_max = s.get("minItems"), s.get("maxItems")
            if n_min is not None and n_min == n_max:
                w += ", exactly %d" % n_min
            elif n_min is not None and n_max is not None:
                w += ", %d to %d items" % (n_min, n_max)
            elif n_min is not None:
                w += ", at least %d item%s" % (n_min, "" if n_min == 1 else "s")
            elif n_max is not None:
                w += ", at most %d items" % n_max
        elif name == "object" and isinstance(s.get("additionalProperties"), dict):
            w = "object of " + _type(s["additionalProperties"])
        else:
            w = name
            if name not in ("null", "boolean", "object", "array"):
                r = _range(s)
                if r:
                    w += " (%s)" % r
        words.append(w)
    return " or ".join(words)


def _md(text):
    """A description as Markdown: outside `code` spans, < and > are written
    as entities so that S<l> is not taken for an HTML tag."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def entries(schema):
    """(path, markdown lines) for every key of the schema, depth first in
    the schema's order; a key whose value is an object is followed by its
    own keys."""
    out = []
    missing = []

    def walk(props, required, prefix):
        for name, s in props.items():
            path = prefix + name
            desc = (s.get("description") or "").strip()
            if not desc:
                missing.append(path)
            if name in required:
                default = "required"
            elif "default" in s:
                default = "default " + _code(s["default"])
            else:
                default = "optional"
            lines = ["### `%s`" % path, "", "%s; %s." % (_type(s), default), "", _md(desc), ""]
            out.append((path, lines))
            if isinstance(s.get("properties"), dict):
                walk(s["properties"], s.get("required", []), path + ".")

    walk(schema.get("properties", {}), schema.get("required", []), "")
    return out, missing


def render(schema_path, schema):
    lines = [BEGIN % schema_path, ""]
    if schema.get("description"):
        lines += [_md(schema["description"].strip()), ""]
    for _, block in entries(schema)[0]:
        lines += block
    lines.append(END)
    return lines


def split_page(page_path, text, schema_path):
    """The page as (lines before BEGIN, generated lines, lines after END)."""
    lines = text.split("\n")
    begin = BEGIN % schema_path
    try:
        b = lines.index(begin)
        e = lines.index(END, b)
    except ValueError:
        raise SystemExit("%s: no generated section (the line %s ... %s); add the two marker "
                         "lines and run `make docs`" % (page_path, begin, END))
    return lines[:b], lines[b:e + 1], lines[e + 1:]


def blocks_of(lines):
    """Generated lines cut at each key heading: {path: lines}, in order."""
    found, cur = {}, None
    for line in lines:
        if line.startswith("### `") and line.endswith("`"):
            cur = line[5:-1]
            found[cur] = []
        if cur is not None:
            found[cur].append(line)
    return found


def check(schema_path, schema, page_path, generated):
    want = render(schema_path, schema)
    if generated == want:
        return 0
    have_b = blocks_of(generated)
    want_b = blocks_of(want)
    for path in want_b:
        if path not in have_b:
            return fail(page_path, "key %s of %s is missing" % (path, schema_path))
        if have_b[path] != want_b[path]:
            return fail(page_path, "key %s differs from %s" % (path, schema_path))
    for path in have_b:
        if path not in want_b:
            return fail(page_path, "key %s is not in %s" % (path, schema_path))
    return fail(page_path, "the text before the first key differs from %s" % schema_path)


def fail(page_path, what):
    print("%s: out of date: %s; run `make docs`" % (page_path, what), file=sys.stderr)
    return 1


def main(argv):
    args = [a for a in argv[1:] if a != "--check"]
    if len(args) != 2:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    schema_path, page_path = args
    try:
        with open(schema_path, encoding="utf-8") as f:
            schema = json.load(f)
    except (OSError, ValueError) as e:
        print("%s: %s" % (schema_path, e), file=sys.stderr)
        return 1
    _, missing = entries(schema)
    if missing:
        print("%s: key %s has no description (the reference page is made from them)"
              % (schema_path, missing[0]), file=sys.stderr)
        return 1
    try:
        with open(page_path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        print("%s: %s" % (page_path, e.strerror), file=sys.stderr)
        return 1
    head, generated, tail = split_page(page_path, text, schema_path)
    if "--check" in argv:
        return check(schema_path, schema, page_path, generated)
    new = "\n".join(head + render(schema_path, schema) + tail)
    if new != text:
        with open(page_path, "w", encoding="utf-8") as f:
            f.write(new)
        print("%s: keys rewritten from %s" % (page_path, schema_path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
