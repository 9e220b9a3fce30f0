#!/usr/bin/env python3
"""The reader's test scores by page kind: joins `docmint eval --report`'s
per-question ANLS with the page each question is about and the kind
`docmint synth` drew for that page (synth_lines.jsonl).  The ANLS values
themselves come from docmint eval; this only groups them.

usage: reader_scores.py REPORT.json ANNOTATIONS.json SYNTH_LINES.jsonl OUT.json
"""
import json
import sys


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__.strip().splitlines()[-1])
    report_path, annot_path, lines_path, out_path = sys.argv[1:]
    report = json.load(open(report_path))
    image_of = {e["questionId"]: e["image"] for e in json.load(open(annot_path))["data"]}
    kind_of = {}
    with open(lines_path) as f:
        for line in f:
            rec = json.loads(line)
            kind_of[rec["image"]] = rec["kind"]
    sums = {}
    for q in report["per_question"]:
        kind = kind_of.get(image_of.get(q["questionId"]), "?")
        s = sums.setdefault(kind, [0.0, 0])
        s[0] += q["anls"]
        s[1] += 1
    out = {
        "anls": report["anls"],
        "questions": report["questions"],
        "by_question_type": report["by_question_type"],
        "by_page_kind": {k: {"anls": v[0] / v[1], "count": v[1]} for k, v in sorted(sums.items())},
    }
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print("test ANLS %.4f over %d questions" % (out["anls"], out["questions"]))
    for k, v in out["by_page_kind"].items():
        print("  %-10s %.4f  (%d)" % (k, v["anls"], v["count"]))


if __name__ == "__main__":
    main()
