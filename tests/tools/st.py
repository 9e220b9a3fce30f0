#!/usr/bin/env python3
"""Small safetensors tool for the command-line tests (standard library only).

  st.py extract SRC OUT PREFIX NAME...   copy tensors PREFIX+NAME to OUT as NAME
  st.py compare GOT REF PREFIX           every tensor of REF named PREFIX* must be
                                          in GOT (without the prefix) and agree within
                                          the tolerance of its kind; prints the worst
  st.py match GOT NAME REF REFNAME [I]   GOT's one-element NAME equals element I (flat
                                          index, default 0) of REF's REFNAME within 1e-4
"""
import json
import math
import struct
import sys
from array import array

CODES = {"F32": "f", "I64": "q", "I32": "i", "U8": "B"}


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, ent in header.items():
        a, b = ent["data_offsets"]
        arr = array(CODES[ent["dtype"]])
        arr.frombytes(data[8 + n + a:8 + n + b])
        out[name] = (ent["dtype"], ent["shape"], arr)
    return out


def save(path, tensors):
    header, blobs, off = {}, [], 0
    for name, (dt, shape, arr) in tensors.items():
        raw = arr.tobytes()
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def tolerance(name, ref=None):
    """Absolute tolerance of a tensor; variances are small numbers whose
    float32 rounding scales with their size: 1e-4 of the largest."""
    if "variance" in name and ref is not None:
        return 1e-4 * max((abs(v) for v in ref if not math.isnan(v)), default=0.0) or 1e-12
    if "attentions" in name:
        return 5e-5
    if "logits" in name or "scores" in name:
        return 5e-4
    return 1e-4


def main():
    cmd = sys.argv[1]
    if cmd == "extract":
        src, out, prefix = load(sys.argv[2]), sys.argv[3], sys.argv[4]
        save(out, {n: src[prefix + n] for n in sys.argv[5:]})
        return 0
    if cmd == "match":
        got, name, ref, refname = load(sys.argv[2]), sys.argv[3], load(sys.argv[4]), sys.argv[5]
        i = int(sys.argv[6]) if len(sys.argv) > 6 else 0
        if name not in got or refname not in ref:
            print(f"missing: {name if name not in got else refname}")
            return 1
        g, r = got[name][2][0], ref[refname][2][i]
        print(f"{name} {g:.6g} vs {refname}[{i}] {r:.6g}")
        return 0 if abs(g - r) <= 1e-4 else 1
    got, ref, prefix = load(sys.argv[2]), load(sys.argv[3]), sys.argv[4]
    bad = 0
    worst = 0.0
    checked = 0
    for name, (dt, shape, r) in ref.items():
        if not name.startswith(prefix):
            continue
        short = name[len(prefix):]
        if short in ("pixel_values", "decoder_input_ids"):
            continue
        if short not in got:
            print(f"missing: {short}")
            bad += 1
            continue
        gdt, gshape, g = got[short]
        if gshape != shape:
            print(f"shape {short}: {gshape} vs {shape}")
            bad += 1
            continue
        checked += 1
        if dt != "F32":
            if list(g) != list(r):
                print(f"differs: {short}")
                bad += 1
            continue
        d = 0.0
        for x, y in zip(g, r):
            if math.isnan(x) or math.isnan(y):
                if math.isnan(x) != math.isnan(y):
                    d = math.inf
                continue
            if math.isinf(y) or math.isinf(x):
                if x != y:
                    d = math.inf
                continue
            d = max(d, abs(x - y))
        tol = tolerance(short, r)
        worst = max(worst, d / tol)
        if d > tol:
            print(f"{short}: max abs diff {d:.3g} > {tol:.1e}")
            bad += 1
    print(f"compared {checked} tensors, worst diff/tolerance {worst:.3f}, {bad} failures")
    return 1 if bad or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
