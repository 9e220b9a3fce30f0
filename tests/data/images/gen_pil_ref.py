#!/usr/bin/python3
"""Make the image-loading and resampling reference data for tests/test_image.c.

Run with Debian's Python and Pillow 9.4.0 (apt-get install python3-pil
python3-numpy), the Pillow the golden Donut data was made with:

    cd tests/data/images && /usr/bin/python3 gen_pil_ref.py

Writes, next to this script:
  - small test images in several formats and modes (PIL writes them);
  - pipeK.json: Donut processor configs;
  - pil_ref.safetensors:
      srcJ                       uint8 [h, w, 3] random resampling sources
      rsK.params / rsK.out       int32 [src, out_w, out_h, filter, 10*reducing_gap]
                                 and PIL Image.resize's result
      rdK.params / rdK.out       int32 [src, fx, fy, x0, y0, x1, y1] and
                                 PIL Image.reduce((fx, fy), box)'s result
      pipeK.input / .resized_u8 / .thumbnail_u8 / .pixel_values
                                 the DonutImageProcessor steps with the config
                                 pipeK.json, computed exactly as transformers
                                 4.30 does (PIL resize + numpy), a recipe checked
                                 bit for bit against tests/data/tiny-a
      load.<file>[.pK]           uint8 [h, w, 3]: numpy.asarray(
                                 Image.open(file).convert("RGB")) (per page)
All content is pseudo-random with a fixed seed; rerunning gives the same files.
"""
import json
import struct

import numpy as np
import PIL
from PIL import Image

assert PIL.__version__ == "9.4.0", PIL.__version__
rng = np.random.default_rng(20240601)
T = {}


def noise(h, w, smooth=False):
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if smooth:  # a gradient with mild noise, like a scan
        y, x = np.mgrid[0:h, 0:w]
        g = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1)
        a = np.clip(g + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
    return a


# --- resize / reduce ---------------------------------------------------
srcs = [noise(47, 61), noise(160, 240), noise(37, 300, smooth=True), noise(131, 97)]
for j, s in enumerate(srcs):
    T[f"src{j}"] = s
resize_cases = []
for f in (1, 2, 3, 4, 5):
    resize_cases += [(0, 23, 17, f, 0), (0, 130, 101, f, 0), (0, 100, 20, f, 0), (0, 61, 30, f, 0),
                     (2, 41, 5, f, 0)]
resize_cases += [(3, 120, 162, 2, 0), (3, 120, 162, 3, 0), (3, 50, 180, 1, 0)]
resize_cases += [(1, 37, 23, 3, 2.0), (1, 70, 190, 3, 2.0), (1, 29, 31, 2, 3.0), (1, 7, 9, 3, 2.0),
                 (2, 19, 2, 3, 2.0), (1, 151, 13, 1, 2.0), (3, 11, 40, 3, 2.0), (1, 300, 41, 3, 2.0)]
for k, (j, w, h, f, gap) in enumerate(resize_cases):
    im = Image.fromarray(srcs[j])
    out = im.resize((w, h), resample=f, reducing_gap=gap if gap else None)
    T[f"rs{k}.params"] = np.array([j, w, h, f, int(round(gap * 10))], dtype=np.int32)
    T[f"rs{k}.out"] = np.asarray(out)
reduce_cases = [(1, 2, 2, (0, 0, 240, 160)), (1, 3, 3, (0, 0, 240, 160)), (1, 5, 4, (1, 2, 239, 157)),
                (1, 7, 1, (0, 0, 240, 160)), (1, 1, 6, (3, 0, 240, 160)), (0, 4, 5, (0, 0, 61, 47)),
                (3, 9, 11, (5, 7, 97, 131))]
for k, (j, fx, fy, box) in enumerate(reduce_cases):
    out = Image.fromarray(srcs[j]).reduce((fx, fy), box=box)
    T[f"rd{k}.params"] = np.array([j, fx, fy, *box], dtype=np.int32)
    T[f"rd{k}.out"] = np.asarray(out)


# --- the Donut processor (transformers 4.30 steps) ---------------------
def donut(arr, cfg):
    size = cfg.get("size", {"height": 2560, "width": 1920})
    if isinstance(size, list):
        size = {"height": size[1], "width": size[0]}
    H, W = size["height"], size["width"]
    if cfg.get("do_align_long_axis", False):
        ih, iw = arr.shape[:2]
        if (W < H and iw > ih) or (W > H and iw < ih):
            arr = np.rot90(arr, 3, axes=(0, 1))
    if cfg.get("do_resize", True):
        h, w = arr.shape[:2]
        s = min(H, W)
        short, long = (w, h) if w <= h else (h, w)
        nl = int(s * long / short)
        nh, nw = (nl, s) if w <= h else (s, nl)
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize(
            (nw, nh), resample=cfg.get("resample", 2)))
    resized = arr
    if cfg.get("do_thumbnail", True):
        ih, iw = arr.shape[:2]
        th, tw = min(ih, H), min(iw, W)
        if not (th == ih and tw == iw):
            if ih > iw:
                tw = int(iw * th / ih)
            elif iw > ih:
                th = int(ih * tw / iw)
            arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize(
                (tw, th), resample=3, reducing_gap=2.0))
    thumb = arr
    if cfg.get("do_pad", True):
        h, w = arr.shape[:2]
        pt, pl = (H - h) // 2, (W - w) // 2
        arr = np.pad(arr, ((pt, H - h - pt), (pl, W - w - pl), (0, 0)))
    x = arr
    if cfg.get("do_rescale", True):
        x = (x * cfg.get("rescale_factor", 1 / 255)).astype(np.float32)
    if cfg.get("do_normalize", True):
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        mean = np.array(cfg.get("image_mean", [0.5] * 3), dtype=x.dtype)
        std = np.array(cfg.get("image_std", [0.5] * 3), dtype=x.dtype)
        x = (x - mean) / std
    return resized, thumb, np.ascontiguousarray(x.transpose(2, 0, 1)[None]).astype(np.float32)


base = {"do_align_long_axis": False, "do_normalize": True, "do_pad": True, "do_rescale": True,
        "do_resize": True, "do_thumbnail": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "DonutImageProcessor", "image_std": [0.5, 0.5, 0.5],
        "processor_class": "DonutProcessor", "resample": 2,
        "rescale_factor": 0.00392156862745098, "size": {"height": 64, "width": 52}}
pipes = [
    (noise(500, 41), dict(base)),                                   # thumbnail with reduce + corners
    (noise(40, 120, smooth=True), dict(base, do_align_long_axis=True)),  # rotated
    (noise(90, 70), {"feature_extractor_type": "DonutFeatureExtractor", "size": [40, 56],
                     "resample": 3, "image_mean": [0.485, 0.456, 0.406],
                     "image_std": [0.229, 0.224, 0.225], "do_align_long_axis": False}),  # legacy
    (noise(33, 45), dict(base, do_pad=False, resample=1)),          # no pad, LANCZOS, upscale
    (noise(120, 40), dict(base, do_normalize=False, resample=5)),   # rescale only, HAMMING
    (noise(50, 50), dict(base, do_resize=False, do_rescale=False, resample=4)),  # no resize
    (noise(200, 120, smooth=True), dict(base, size={"height": 64, "width": 48})),  # downscale
]
for k, (arr, cfg) in enumerate(pipes):
    r, t, pv = donut(arr, cfg)
    T[f"pipe{k}.input"] = arr
    T[f"pipe{k}.resized_u8"] = np.ascontiguousarray(r)
    T[f"pipe{k}.thumbnail_u8"] = np.ascontiguousarray(t)
    T[f"pipe{k}.pixel_values"] = pv
    with open(f"pipe{k}.json", "w") as fp:
        json.dump(cfg, fp, indent=2, sort_keys=True)
        fp.write("\n")

# --- files in several formats and modes --------------------------------
rgb = noise(30, 40, smooth=True)
rgba = np.concatenate([rgb, rng.integers(0, 256, (30, 40, 1), dtype=np.uint8)], -1)
grey = noise(25, 20, smooth=True)[..., 0]
files = {
    "rgb.png": Image.fromarray(rgb),
    "grey.png": Image.fromarray(grey, "L"),
    "rgba.png": Image.fromarray(rgba, "RGBA"),
    "la.png": Image.fromarray(rgba[..., [0, 3]], "LA"),
    "pal.png": Image.fromarray(rgb).quantize(37),
    "bw.png": Image.fromarray(grey, "L").convert("1"),
    "rgb.jpg": Image.fromarray(rgb),
    "grey.jpg": Image.fromarray(grey, "L"),
    "cmyk.jpg": Image.fromarray(rgba, "CMYK"),
    "cmyk.tif": Image.fromarray(rgba, "CMYK"),
}
for name, im in files.items():
    kw = {"quality": 90} if name.endswith(".jpg") else {}
    im.save(name, **kw)
    T[f"load.{name}"] = np.asarray(Image.open(name).convert("RGB"))
# 16-bit grey: PIL clips it to 255 in convert("RGB"); docmint takes the high
# byte, so the reference is v >> 8 of the stored samples.
g16 = (rng.integers(0, 65536, (9, 11))).astype(np.uint16)
Image.fromarray(g16, "I;16").save("grey16.png")
back = np.asarray(Image.open("grey16.png")).astype(np.uint32)
assert (back == g16).all()
T["load.grey16.png"] = np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, -1)
# multi-page TIFF: pages of different sizes and modes.
pages = [Image.fromarray(noise(30, 40)), Image.fromarray(grey, "L"),
         Image.fromarray(noise(17, 33)).convert("CMYK")]
pages[0].save("multi.tif", save_all=True, append_images=pages[1:])
im = Image.open("multi.tif")
assert im.n_frames == len(pages)
for p in range(im.n_frames):
    im.seek(p)
    T[f"load.multi.tif.p{p}"] = np.asarray(im.convert("RGB"))

# --- write ---------------------------------------------------------------
DT = {np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}
head, blobs, off = {}, [], 0
# Wider types first: the data section starts 8-aligned and holes are not
# allowed, so this keeps every float/int32 tensor 4-aligned in the file.
for name in sorted(T, key=lambda n: (-np.asarray(T[n]).dtype.itemsize, n)):
    a = np.ascontiguousarray(T[name])
    b = a.tobytes()
    head[name] = {"dtype": DT[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
head["__metadata__"] = {"format": "pt", "made_by": "gen_pil_ref.py, Pillow " + PIL.__version__}
hj = json.dumps(head, separators=(",", ":")).encode()
hj += b" " * ((8 - len(hj) % 8) % 8)
with open("pil_ref.safetensors", "wb") as fp:
    fp.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))
print(len(T), "tensors,", off, "bytes")
