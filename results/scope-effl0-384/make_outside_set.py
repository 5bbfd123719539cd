"""The out-of-scope images the scope check is measured on (never chosen on).

Six kinds, one folder each under OUT (default /tmp/fv-outside):
  photographs/   the photographs that PyPI packages ship (scikit-image, scikit-learn, matplotlib)
  documents/     pages of text and tables, and screenshots of documents rendered by Chromium
  blank/         uniform and gradient frames
  noise/         uniform, Gaussian, salt-and-pepper and blob noise
  text/          text frames (white on black, as a unit's dose or error screen)
  modalities/    CT, MR, ultrasound, fundus and microscopy slices from the packages' test data

Needs: pip install scikit-image scikit-learn matplotlib pydicom nibabel pillow numpy, and
Debian's chromium for the screenshots. Seeded: the same files each time.
"""
import glob
import gzip
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OUT = sys.argv[1] if len(sys.argv) > 1 else "/tmp/fv-outside"
rng = np.random.default_rng(2026)
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
MONO = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"


def save(kind, name, arr_or_img):
    os.makedirs(os.path.join(OUT, kind), exist_ok=True)
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else to_image(arr_or_img)
    ext = ".jpg" if kind == "photographs" else ".png"
    img.save(os.path.join(OUT, kind, name + ext))


def to_image(a):
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4)):
        lo, hi = np.percentile(a, 0.5), np.percentile(a, 99.5)
        if hi <= lo:
            hi = lo + 1
        a = np.clip((a - lo) / (hi - lo), 0, 1) * 255
        return Image.fromarray(a.astype(np.uint8)).convert("RGB" if a.ndim == 3 else "L")
    raise ValueError(a.shape)


def photographs():
    import skimage.data as d

    for n in ["astronaut", "camera", "chelsea", "coffee", "rocket", "horse",
              "moon", "hubble_deep_field", "motorcycle_right", "coins", "grass", "gravel", "brick", "clock",
              "colorwheel", "logo"]:
        try:
            img = getattr(d, n)()
        except Exception as e:  # noqa: BLE001
            print("skip", n, e)
            continue
        img = np.asarray(img)
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        save("photographs", n, to_image(img[..., :3] if img.ndim == 3 else img))
    faces = d.lfw_subset()
    for i in range(0, 60, 6):
        save("photographs", f"face-{i:02d}", Image.fromarray((faces[i] * 255).astype(np.uint8)).resize((250, 250)))
    from sklearn.datasets import load_sample_images

    for i, img in enumerate(load_sample_images().images):
        save("photographs", f"sklearn-{i}", Image.fromarray(img))
    import matplotlib.cbook as cb

    save("photographs", "grace_hopper", Image.open(cb.get_sample_data("grace_hopper.jpg")))


def documents():
    texts = []
    for p in sorted(glob.glob("/usr/share/common-licenses/*"))[:8]:
        if os.path.isfile(p):
            texts.append((os.path.basename(p), open(p, errors="replace").read()))
    font = ImageFont.truetype(FONT, 16)
    for name, t in texts:
        img = Image.new("L", (850, 1100), 255)
        dr = ImageDraw.Draw(img)
        y = 40
        for line in t.splitlines()[:60]:
            dr.text((50, y), line[:90], fill=0, font=font)
            y += 17
        save("documents", f"page-{name}", img)
    # A table, as a printed form.
    img = Image.new("L", (1000, 700), 250)
    dr = ImageDraw.Draw(img)
    for r in range(15):
        for c in range(6):
            dr.rectangle([40 + c * 150, 40 + r * 40, 190 + c * 150, 80 + r * 40], outline=0)
            dr.text((48 + c * 150, 50 + r * 40), f"{rng.integers(0, 9999)}", fill=0, font=font)
    save("documents", "table", img)
    import skimage.data as d

    save("documents", "skimage-page", d.page())
    save("documents", "skimage-text", d.text())
    # Screenshots of documents in a browser.
    html = glob.glob("/usr/share/doc/**/*.html", recursive=True)[:12]
    with tempfile.TemporaryDirectory() as tmp:
        for i, h in enumerate(sorted(html)):
            png = os.path.join(tmp, f"{i}.png")
            subprocess.run(
                ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp}/u",
                 f"--screenshot={png}", "--window-size=1280,900", "file://" + h],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
            if os.path.exists(png):
                save("documents", f"screenshot-{i:02d}", Image.open(png).convert("RGB"))


def blank():
    for v in [0, 16, 128, 200, 255]:
        save("blank", f"uniform-{v}", np.full((454, 373), v, dtype=np.uint8))
    x = np.linspace(0, 255, 512)
    save("blank", "gradient-h", np.tile(x, (512, 1)))
    save("blank", "gradient-v", np.tile(x, (512, 1)).T)
    yy, xx = np.mgrid[-1:1:512j, -1:1:512j]
    save("blank", "vignette", 255 * (1 - np.clip(np.hypot(xx, yy), 0, 1)))
    save("blank", "uniform-2048", np.full((2048, 1536), 100, dtype=np.uint8))
    save("blank", "half", np.hstack([np.zeros((400, 200)), np.full((400, 200), 255)]))


def noise():
    for i, size in enumerate([(454, 373), (512, 512), (1024, 768)]):
        save("noise", f"uniform-{i}", rng.integers(0, 256, size))
        save("noise", f"gauss-{i}", rng.normal(128, 40, size))
        sp = np.where(rng.random(size) < 0.5, 0, 255)
        save("noise", f"salt-pepper-{i}", sp)
    import skimage.data as d

    for i in range(3):
        save("noise", f"blobs-{i}", d.binary_blobs(512, rng=i).astype(np.uint8) * 255)
    save("noise", "smooth", np.cumsum(np.cumsum(rng.normal(size=(512, 512)), 0), 1))


def text_frames():
    font = ImageFont.truetype(MONO, 22)
    lines = ["EXPOSURE INDEX 1450  DAP 2.1 uGym2", "kVp 60  mAs 4.0  SID 110 cm",
             "DETECTOR NOT READY", "CALIBRATION REQUIRED - CONTACT SERVICE",
             "PATIENT: ******  ID: ******", "STUDY COMPLETE", "ERROR 0x1F3 TUBE OVERLOAD",
             "Dose report", "Battery 12 %", "QC phantom: PASS"]
    for i in range(10):
        img = Image.new("L", (800, 600), 0 if i % 3 else 40)
        dr = ImageDraw.Draw(img)
        for j in range(1 + i % 4):
            dr.text((40, 60 + 60 * j), lines[(i + j) % len(lines)], fill=255, font=font)
        save("text", f"frame-{i}", img)


def modalities():
    import nibabel as nib
    import pydicom
    import skimage.data as d

    ddir = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    for f in ["CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm", "JPEG2000.dcm",
              "examples_ybr_color.dcm", "examples_rgb_color.dcm", "examples_palette.dcm",
              "rtdose_1frame.dcm", "image_dfl.dcm", "SC_rgb_jpeg_dcmtk.dcm"]:
        try:
            ds = pydicom.dcmread(os.path.join(ddir, f))
            a = ds.pixel_array
            if a.ndim == 3 and a.shape[-1] not in (3, 4):
                a = a[len(a) // 2]
            elif a.ndim == 4:
                a = a[0]
            save("modalities", f"dicom-{f[:-4]}", a)
        except Exception as e:  # noqa: BLE001
            print("skip", f, e)
    ndir = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
    for f in ["anatomical.nii", "example4d.nii.gz", "functional.nii", "standard.nii.gz"]:
        try:
            v = np.asanyarray(nib.load(os.path.join(ndir, f)).dataobj).astype(float)
            while v.ndim > 3:
                v = v[..., 0]
            for axis in range(3):
                for frac in (0.35, 0.5, 0.65):
                    k = int(v.shape[axis] * frac)
                    s = np.take(v, k, axis=axis)
                    if min(s.shape) < 8:
                        continue
                    img = to_image(np.rot90(s)).resize((max(256, s.shape[0] * 4), max(256, s.shape[1] * 4)))
                    save("modalities", f"mri-{f.split('.')[0]}-{axis}-{int(frac * 100)}", img)
        except Exception as e:  # noqa: BLE001
            print("skip", f, e)
    import matplotlib.cbook as cb

    with gzip.open(cb.get_sample_data("s1045.ima.gz", asfileobj=False)) as fh:
        s = np.frombuffer(fh.read(), np.uint16).reshape(256, 256)
    save("modalities", "mri-s1045", s)
    save("modalities", "ct-shepp-logan-phantom", d.shepp_logan_phantom())
    save("modalities", "fundus-retina", d.retina())
    save("modalities", "fundus-microaneurysms", d.microaneurysms())
    save("modalities", "microscopy-ihc", d.immunohistochemistry())
    save("modalities", "microscopy-cell", d.cell())


for step in [photographs, documents, blank, noise, text_frames, modalities]:
    step()
for k in sorted(os.listdir(OUT)):
    print(k, len(os.listdir(os.path.join(OUT, k))))
